//! The SQL side: statements run on any supported database URL, the manual's
//! tasks table, and throwaway databases on the shared PostgreSQL and MariaDB
//! servers.

use super::process::block_on;
use super::warden::Setup;

/// The manual's table, as each database spells it.
pub const TASKS_TABLE_SQLITE: &str = "CREATE TABLE inspection_tasks (
    id INTEGER PRIMARY KEY, name TEXT, cron TEXT, every_ms INTEGER, tz TEXT,
    payload TEXT, opts TEXT, queue TEXT, enabled BOOLEAN NOT NULL DEFAULT 1);";

/// The PostgreSQL trigger the README documents for `[source] notify_channel`,
/// on the default table and channel `inspection_tasks_changed`.
pub const NOTIFY_TRIGGER_SQL: &str = "
CREATE OR REPLACE FUNCTION bullmq_warden_notify() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify(TG_ARGV[0], TG_TABLE_NAME);
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER inspection_tasks_changed
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON inspection_tasks
  FOR EACH STATEMENT EXECUTE FUNCTION bullmq_warden_notify('inspection_tasks_changed');
";

/// Executes SQL statements on any supported database URL.
pub fn run_sql(url: &str, sql: &str) {
    let url = url.to_owned();
    let sql = sql.to_owned();
    block_on(move || async move {
        use sqlx::{AssertSqlSafe, Connection};
        macro_rules! execute {
            ($connection:ty) => {{
                let mut conn = <$connection>::connect(&url)
                    .await
                    .unwrap_or_else(|e| panic!("connect {url}: {e}"));
                sqlx::raw_sql(AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("sql on {url}: {e}"));
            }};
        }
        if url.starts_with("sqlite:") {
            execute!(sqlx::SqliteConnection)
        } else if url.starts_with("postgres") {
            execute!(sqlx::PgConnection)
        } else {
            execute!(sqlx::MySqlConnection)
        }
    })
}

/// `n` enabled cron rows for `queue` in the SQLite source (the tasks table
/// created first), made by SQLite itself: a daily run at 03:00–03:59.
pub fn sqlite_rows(setup: &Setup, n: u32, queue: &str) {
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
         INSERT INTO inspection_tasks (id, name, cron, queue)
         SELECT i, 'task-' || i, (i % 60) || ' 3 * * *', '{queue}' FROM n;"
    ));
}

/// A throwaway database on the shared PostgreSQL or MariaDB server (named by
/// `BULLMQ_WARDEN_TEST_POSTGRES_URL` / `BULLMQ_WARDEN_TEST_MYSQL_URL`), dropped
/// when the test ends.
pub struct Database {
    pub admin_url: String,
    pub name: String,
    pub url: String,
}

impl Database {
    pub fn create(admin_url: String) -> Self {
        let name = format!(
            "warden_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        run_sql(&admin_url, &format!("CREATE DATABASE {name}"));
        let (base, _) = admin_url.rsplit_once('/').expect("URL with a database");
        let url = format!("{base}/{name}");
        Self {
            admin_url,
            name,
            url,
        }
    }

    pub fn postgres() -> Self {
        Self::create(server_url(
            "BULLMQ_WARDEN_TEST_POSTGRES_URL",
            "postgres://warden:warden@127.0.0.1:5432/postgres",
        ))
    }

    pub fn mariadb() -> Self {
        Self::create(server_url(
            "BULLMQ_WARDEN_TEST_MYSQL_URL",
            "mysql://warden:warden@127.0.0.1:3306/mysql",
        ))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Never panic while unwinding from a failed assertion.
        let _ = std::panic::catch_unwind(move || {
            run_sql(&admin_url, &format!("DROP DATABASE IF EXISTS {name}"))
        });
    }
}

fn server_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}
