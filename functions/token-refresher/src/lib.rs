//! Runs on a schedule: renews every connection whose access token is due, or that has not
//! been refreshed for a day, so refresh tokens never lapse from idleness. Finds them through
//! the sparse `refresh-due` index (no scans) and works with bounded concurrency.

use futures::StreamExt;
use ms_oauth::config::ConfigError;
use ms_oauth::tokens::{RenewOutcome, TokenService};
use serde::Serialize;

/// Connections renewed at once.
pub const CONCURRENCY: usize = 8;
/// Connections taken per run; the rest wait for the next run (every 5 minutes).
pub const BATCH: i32 = 500;

/// The refresher's state, built once per instance.
#[derive(Debug)]
pub struct Refresher {
    pub tokens: TokenService,
}

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Report {
    pub due: usize,
    pub refreshed: usize,
    pub needs_reauth: usize,
    pub skipped: usize,
    pub failed: usize,
}

impl Refresher {
    pub fn from_sdk(
        lookup: &dyn Fn(&str) -> Option<String>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, ConfigError> {
        Ok(Self { tokens: TokenService::from_sdk(lookup, sdk)? })
    }

    /// One pass over the due connections.
    pub async fn run(&self) -> Result<Report, ms_oauth::store::StoreError> {
        let now = self.tokens.clock.now().unix_timestamp();
        let due = self.tokens.store.due_connections(now, BATCH).await?;
        let mut report = Report { due: due.len(), ..Report::default() };
        let mut outcomes = futures::stream::iter(due)
            .map(|cid| async move {
                let outcome = self.tokens.renew_if_due(&cid).await;
                (cid, outcome)
            })
            .buffer_unordered(CONCURRENCY);
        while let Some((cid, outcome)) = outcomes.next().await {
            match outcome {
                RenewOutcome::Refreshed => report.refreshed += 1,
                RenewOutcome::NeedsReauth => report.needs_reauth += 1,
                RenewOutcome::Skipped => report.skipped += 1,
                RenewOutcome::Failed(e) => {
                    report.failed += 1;
                    tracing::warn!(cid = %cid, error = %ms_oauth::error::chain(&e), "renewal failed; retried next run");
                }
            }
        }
        tracing::info!(
            due = report.due,
            refreshed = report.refreshed,
            needs_reauth = report.needs_reauth,
            skipped = report.skipped,
            failed = report.failed,
            "refresh run finished"
        );
        Ok(report)
    }
}
