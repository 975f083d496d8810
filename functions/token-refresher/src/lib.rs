//! Runs on a schedule: renews every connection whose scheduled refresh is due — a week after
//! the last one to keep its refresh token alive, or shortly before its access token expires
//! when AutoKitteh reads that token from its vars (write-back). Finds them through the sparse
//! `refresh-due` index (no scans), page after page until none is due or the run's time is
//! spent, with bounded concurrency; a connection that fails is retried after a doubling
//! backoff and reported once it keeps failing.

// The handlers' futures (a refresh with its retries, KMS, DynamoDB and the AutoKitteh
// write-back inside the deadline guard) are deeper than the compiler lays out by default.
#![recursion_limit = "256"]

use futures::StreamExt;
use ms_oauth::config::ConfigError;
use ms_oauth::metrics::{record_dependency_failure, store_dependency};
use ms_oauth::tokens::{RenewOutcome, TokenService};
use serde::Serialize;

/// Connections renewed at once.
pub const CONCURRENCY: usize = 8;
/// Connections read from the index per page.
pub const PAGE: i32 = 500;
/// How long a run keeps starting renewals, within a page too (the function has 300 s; the
/// renewals under way finish, each bounded as the README's "Timeouts" says).
pub const RUN_BUDGET: std::time::Duration = std::time::Duration::from_secs(240);

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
    /// Failed [`ms_oauth::tokens::STUCK_AFTER`] or more times in a row.
    pub stuck: usize,
    /// Due, but not started because the run's budget was spent: still due, the next run
    /// takes them.
    pub deferred: usize,
}

impl Refresher {
    pub fn from_sdk(
        lookup: &dyn Fn(&str) -> Option<String>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, ConfigError> {
        let role = ms_oauth::config::Role::Refresher;
        Self::wire(&ms_oauth::wiring::Wiring::new(role, lookup, sdk))
    }

    /// Builds the refresher through `wiring`.
    pub fn wire(wiring: &ms_oauth::wiring::Wiring<'_>) -> Result<Self, ConfigError> {
        Ok(Self { tokens: TokenService::wire(wiring)? })
    }

    /// One pass over the due connections, page by page.
    pub async fn run(&self) -> Result<Report, ms_oauth::store::StoreError> {
        self.run_with_page(PAGE).await
    }

    /// The same with pages of `page` connections (tests use small ones).
    pub async fn run_with_page(&self, page: i32) -> Result<Report, ms_oauth::store::StoreError> {
        self.run_within(page, RUN_BUDGET).await
    }

    /// The same, starting renewals for at most `budget`.
    pub async fn run_within(
        &self,
        page: i32,
        budget: std::time::Duration,
    ) -> Result<Report, ms_oauth::store::StoreError> {
        let began = std::time::Instant::now();
        let deadline = began + budget;
        let mut report = Report::default();
        loop {
            let now = self.tokens.clock.now().unix_timestamp();
            let due = match self.tokens.store.due_connections(now, page).await {
                Ok(due) => due,
                Err(e) => {
                    record_dependency_failure(&*self.tokens.metrics, store_dependency(&e));
                    return Err(e);
                }
            };
            if due.is_empty() {
                break;
            }
            let page = self.renew(due, deadline).await;
            report.due += page.due;
            report.refreshed += page.refreshed;
            report.needs_reauth += page.needs_reauth;
            report.skipped += page.skipped;
            report.failed += page.failed;
            report.stuck += page.stuck;
            report.deferred += page.deferred;
            // Every handled connection leaves the due range (renewed, marked, or postponed);
            // a page of nothing but skips (held elsewhere) would come back unchanged.
            if page.skipped == page.due
                || page.deferred > 0
                || std::time::Instant::now() >= deadline
            {
                break;
            }
        }
        tracing::info!(
            due = report.due,
            refreshed = report.refreshed,
            needs_reauth = report.needs_reauth,
            skipped = report.skipped,
            failed = report.failed,
            stuck = report.stuck,
            deferred = report.deferred,
            "refresh run finished"
        );
        use ms_oauth::metrics::{Metric, name};
        let metrics = &self.tokens.metrics;
        metrics.record(Metric::amount(name::REFRESHER_DUE, report.due as u64));
        metrics.record(Metric::amount(name::REFRESHER_STUCK, report.stuck as u64));
        metrics.record(Metric::millis(name::REFRESHER_RUN_DURATION, began.elapsed(), &[]));
        self.report_client_secret_expiry().await;
        Ok(report)
    }

    /// Records how many days the server-wide client secret has left, from the end date the
    /// operator recorded with it (see [`ms_oauth::secrets::EXPIRES_TAG`]), for the alarm that
    /// warns before it ends. Without a recorded date nothing is recorded.
    async fn report_client_secret_expiry(&self) {
        use ms_oauth::metrics::{Metric, name};
        match self.tokens.client_secret.expires_at().await {
            Ok(Some(at)) => {
                let left = (at - self.tokens.clock.now()).as_seconds_f64() / 86_400.0;
                let days = Metric::gauge(
                    name::CREDENTIAL_DAYS_LEFT,
                    left,
                    &[("Credential", "client_secret")],
                );
                self.tokens.metrics.record(days);
                if left < 30.0 {
                    tracing::warn!(
                        days_left = left.floor(),
                        "the Microsoft client secret ends soon; add a new one and store it"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => {
                if let ms_oauth::secrets::ExpiryError::Secret(_) = &e {
                    record_dependency_failure(&*self.tokens.metrics, Some("secrets_manager"));
                }
                tracing::warn!(error = %ms_oauth::error::chain(&e), "the client secret's end date is unknown");
            }
        }
    }

    /// Renews `due`, starting none after `deadline`.
    async fn renew(
        &self,
        due: Vec<ms_oauth::domain::ConnectionId>,
        deadline: std::time::Instant,
    ) -> Report {
        let mut report = Report { due: due.len(), ..Report::default() };
        let mut outcomes = futures::stream::iter(due)
            .map(|cid| async move {
                if std::time::Instant::now() >= deadline {
                    return (cid, None);
                }
                let outcome = self.tokens.renew_if_due(&cid).await;
                (cid, Some(outcome))
            })
            .buffer_unordered(CONCURRENCY);
        while let Some((cid, outcome)) = outcomes.next().await {
            let Some(outcome) = outcome else {
                report.deferred += 1;
                continue;
            };
            match outcome {
                RenewOutcome::Refreshed => report.refreshed += 1,
                RenewOutcome::NeedsReauth => report.needs_reauth += 1,
                RenewOutcome::Skipped => report.skipped += 1,
                RenewOutcome::Failed(e) => {
                    report.failed += 1;
                    record_dependency_failure(&*self.tokens.metrics, e.failed_dependency());
                    tracing::warn!(cid = %cid, error = %ms_oauth::error::chain(&e), "renewal failed; retried after a backoff");
                }
                RenewOutcome::Stuck(e) => {
                    record_dependency_failure(&*self.tokens.metrics, e.failed_dependency());
                    report.failed += 1;
                    report.stuck += 1;
                }
            }
        }
        report
    }
}
