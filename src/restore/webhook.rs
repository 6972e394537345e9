//! `strategy = "webhook"`: the application restores its own schedulers when
//! asked (the manual's `POST /api/bullmq/recover`); the watcher judges success
//! by comparing rows and Redis afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;

use super::lease::Held;
use super::{Restore, RestoreError, Restored};
use crate::config::{read_secret, redact_url, RecoveryConfig};
use crate::model::Cause;
use crate::plan::Plan;

/// Environment variable holding the webhook's bearer token.
pub(crate) const WEBHOOK_TOKEN_ENV: &str = "BULLMQ_WARDEN_WEBHOOK_TOKEN";

pub(crate) struct Webhook {
    client: reqwest::Client,
    url: String,
    headers: BTreeMap<String, String>,
    token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookError {
    #[error("webhook {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("webhook token from {origin} {reason}")]
    Token { origin: String, reason: String },
}

impl Webhook {
    /// `None` unless the strategy is webhook (the config check ensures a URL).
    pub(crate) fn from_config(config: &RecoveryConfig) -> Result<Option<Self>, WebhookError> {
        let Some(url) = config.webhook_url.clone() else {
            return Ok(None);
        };
        // The environment wins over the file.
        let token = read_secret(
            WEBHOOK_TOKEN_ENV,
            "recovery.webhook_token_file",
            config.webhook_token_file.as_deref(),
        )
        .map_err(|e| WebhookError::Token {
            origin: e.origin,
            reason: e.reason,
        })?
        .map(|secret| secret.value);
        let client = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            .connect_timeout(Duration::from_secs(5))
            // The token and custom headers are meant for this URL alone: a
            // redirect to another origin must not carry them, nor a Referer.
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
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
    pub(crate) async fn call(
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
            .map_err(|e| error(with_causes(&e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            Err(error(format!(
                "answered {status}; redirects are not followed, so that the token and headers \
                 never reach another address: configure the final URL"
            )))
        } else {
            Err(error(format!("answered {status}")))
        }
    }
}

impl Restore for Webhook {
    fn restore<'a>(
        &'a self,
        plan: &'a Plan,
        trigger: Cause,
        _lease: &'a Held,
    ) -> BoxFuture<'a, Result<Restored, RestoreError>> {
        Box::pin(async move {
            self.call(trigger, plan.missing(), plan.mismatched())
                .await?;
            Ok(Restored::Requested)
        })
    }
}

/// The error with every cause behind it: reqwest's own message is only
/// "error sending request", the reason (refused, TLS, timeout) is in its sources.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let message = inner.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = inner.source();
    }
    text
}
