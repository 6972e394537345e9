//! `strategy = "webhook"`: the application restores its own schedulers when
//! asked (the manual's `POST /api/bullmq/recover`); the watcher judges success
//! by comparing rows and Redis afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{redact_url, RecoveryConfig};
use crate::events::Cause;

/// Environment variable holding the webhook's bearer token.
pub const WEBHOOK_TOKEN_ENV: &str = "BULLMQ_WARDEN_WEBHOOK_TOKEN";

pub struct Webhook {
    client: reqwest::Client,
    url: String,
    headers: BTreeMap<String, String>,
    token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("cannot read recovery.webhook_token_file {path}: {reason}")]
    Token { path: String, reason: String },
}

impl Webhook {
    /// `None` unless the strategy is webhook (the config check ensures a URL).
    pub fn from_config(config: &RecoveryConfig) -> Result<Option<Self>, WebhookError> {
        let Some(url) = config.webhook_url.clone() else {
            return Ok(None);
        };
        let token = match (std::env::var(WEBHOOK_TOKEN_ENV), &config.webhook_token_file) {
            (Ok(token), _) => Some(token),
            (Err(_), Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| WebhookError::Token {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?
                    .trim()
                    .to_owned(),
            ),
            (Err(_), None) => None,
        };
        let client = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| WebhookError::Request {
                url: redact_url(&url),
                reason: e.to_string(),
            })?;
        Ok(Some(Self {
            client,
            url,
            headers: config.webhook_headers.clone(),
            token,
        }))
    }

    /// Asks the application to recover; any 2xx answer counts as accepted.
    pub async fn call(
        &self,
        trigger: Cause,
        missing: usize,
        mismatched: usize,
    ) -> Result<(), WebhookError> {
        let error = |reason: String| WebhookError::Request {
            url: redact_url(&self.url),
            reason,
        };
        let mut request = self.client.post(&self.url).json(&serde_json::json!({
            "trigger": trigger.as_str(),
            "missing": missing,
            "mismatched": mismatched,
        }));
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| error(e.without_url().to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(error(format!("answered {}", response.status())))
        }
    }
}
