//! Managed Redis (ElastiCache with in-transit encryption, Azure Cache,
//! Upstash, Memorystore with TLS) is reached over TLS: `rediss://` URLs, as
//! the standalone deployment's Secret holds them.

mod support;

use std::process::Command;

use support::{RedisServer, Setup, TASKS_TABLE_SQLITE};

/// A redis-server that also listens with TLS (self-signed certificate), and
/// the port it does so on.
fn redis_with_tls(dir: &std::path::Path) -> (RedisServer, u16) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    assert!(made.status.success(), "{}", support::text_of(&made));
    let tls_port = support::free_port();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &cert,
        "--tls-auth-clients",
        "no",
    ]);
    (redis, tls_port)
}

#[test]
fn a_redis_behind_tls_is_reached_with_rediss() {
    let certs = tempfile::tempdir().unwrap();
    let (redis, tls_port) = redis_with_tls(certs.path());
    // `#insecure`: the certificate is self-signed; the chain is not what is tested.
    let setup = Setup::new(
        &redis,
        &format!(
            "[redis]\nurl = \"rediss://127.0.0.1:{tls_port}/0#insecure\"\n\
             [source]\nurl = \"sqlite://{{dir}}/tasks.db\"\n"
        ),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql("INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'a', '0 * * * *');");
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["created"], 1, "{report}");
    assert_eq!(redis.zcard("bull:inspection:repeat"), 1);
}
