//! The scheduled refresher: exactly the due connections, through the index, a week apart
//! for standalone connections, with a backoff for failing ones.

use std::time::Duration;

use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::tokens::{FIRST_BACKOFF, STUCK_AFTER, backoff_after};
use token_refresher::Report;

use crate::helpers::*;

const DAY: u64 = 24 * 3600;

#[tokio::test]
async fn the_refresher_renews_exactly_the_due_connections() {
    let app = spawn_app().await;
    let early = new_cid();
    app.connect(&Browser::new(), &early, Origin::Web, "work").await;
    app.clock.advance(Duration::from_secs(3 * DAY));
    let late = new_cid();
    app.connect(&Browser::new(), &late, Origin::Web, "personal").await;

    // Nothing is due yet: not at the access token's expiry (the token API refreshes on
    // read), and not for days after.
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report::default());
    app.clock.advance(Duration::from_secs(3 * DAY));
    assert_eq!(app.refresher.run().await.unwrap(), Report::default());

    // A week and a half after the first sign-in (its keep-alive is due within 6½–7½ days),
    // only it is due.
    app.clock.advance(Duration::from_secs(DAY + DAY / 2));
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 1, refreshed: 1, ..Report::default() });
    assert_eq!(app.connection(&early).await.unwrap().version, 2);
    assert_eq!(app.connection(&late).await.unwrap().version, 1);
    assert_eq!(app.standin.calls().refreshes, 1);

    // The renewed connection is not due again for about a week.
    let renewed = app.connection(&early).await.unwrap().connection;
    let now = ms_oauth::clock::Clock::now(app.clock.as_ref()).unix_timestamp();
    assert!(renewed.refresh_due_at >= now + 6 * DAY as i64, "{}", renewed.refresh_due_at - now);
    assert_eq!(app.refresher.run().await.unwrap(), Report::default());
}

#[tokio::test]
async fn a_dead_grant_leaves_the_refresh_index() {
    let app = spawn_app().await;
    let cid = new_cid();
    app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    app.standin.revoke_refresh_tokens(50173);
    app.clock.advance(Duration::from_secs(8 * DAY));

    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 1, needs_reauth: 1, ..Report::default() });
    let stored = app.connection(&cid).await.unwrap();
    assert_eq!(stored.connection.status, "needs_reauth");
    assert!(stored.connection.refresh_queue.is_none());

    // Weeks later it is still not picked up: no retries against a dead grant.
    app.clock.advance(Duration::from_secs(20 * DAY));
    assert_eq!(app.refresher.run().await.unwrap(), Report::default());
    assert_eq!(app.standin.calls().refreshes, 1);
}

#[tokio::test]
async fn failing_connections_back_off_and_are_reported_once_stuck() {
    let app = spawn_app().await;
    let cid = new_cid();
    app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    app.standin.set_token_fault(Some(ms_oauth_tests::standin::Fault::Status(500)));
    app.clock.advance(Duration::from_secs(8 * DAY));
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 1, failed: 1, ..Report::default() });
    let refreshes = app.standin.calls().refreshes;

    // Not again at the next run (every 5 minutes), but after the backoff.
    assert_eq!(app.refresher.run().await.unwrap(), Report::default());
    assert_eq!(app.standin.calls().refreshes, refreshes, "no call while backing off");
    let stored = app.connection(&cid).await.unwrap().connection;
    assert_eq!(stored.refresh_failures, 1);
    let now = ms_oauth::clock::Clock::now(app.clock.as_ref()).unix_timestamp();
    assert_eq!(stored.refresh_due_at, now + FIRST_BACKOFF.as_secs() as i64);

    // Each failure doubles the wait; at STUCK_AFTER in a row the run reports it.
    for failures in 2..=STUCK_AFTER {
        app.clock.advance(backoff_after(failures - 1));
        let report = app.refresher.run().await.unwrap();
        let stuck = usize::from(failures >= STUCK_AFTER);
        assert_eq!(report, Report { due: 1, failed: 1, stuck, ..Report::default() }, "{failures}");
    }
    assert!(captured_logs().contains("refresh keeps failing"));

    // Microsoft answers again: the next attempt renews it and clears the count.
    app.standin.set_token_fault(None);
    app.clock.advance(backoff_after(STUCK_AFTER));
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 1, refreshed: 1, ..Report::default() });
    assert_eq!(app.connection(&cid).await.unwrap().connection.refresh_failures, 0);
}

/// A deployment with three connections, all due for their keep-alive.
async fn three_due() -> (TestApp, Vec<ConnectionId>) {
    let app = spawn_app().await;
    let cids: Vec<_> = (0..3).map(|_| new_cid()).collect();
    for cid in &cids {
        app.connect(&Browser::new(), cid, Origin::Web, "work").await;
    }
    app.clock.advance(Duration::from_secs(8 * DAY));
    (app, cids)
}

#[tokio::test]
async fn a_run_takes_every_due_connection_page_after_page() {
    let (app, cids) = three_due().await;
    // Pages of one: three pages in one run.
    let refresher = token_refresher::Refresher { tokens: app.refresher.tokens.clone() };
    let report = refresher.run_with_page(1).await.unwrap();
    assert_eq!(report, Report { due: 3, refreshed: 3, ..Report::default() });
    for cid in &cids {
        assert_eq!(app.connection(cid).await.unwrap().version, 2);
    }
}

/// Inside a page too, a run starts no renewal once its budget is spent, so it always ends
/// within the function's time: what it left stays due, and the next run takes it.
#[tokio::test]
async fn a_run_past_its_budget_starts_nothing_more_and_the_next_run_takes_the_rest() {
    let (app, cids) = three_due().await;
    let refresher = token_refresher::Refresher { tokens: app.refresher.tokens.clone() };
    let spent = refresher.run_within(500, Duration::ZERO).await.unwrap();
    assert_eq!(spent, Report { due: 3, deferred: 3, ..Report::default() });
    for cid in &cids {
        assert_eq!(app.connection(cid).await.unwrap().version, 1, "nothing was started");
    }
    let next = refresher.run().await.unwrap();
    assert_eq!(next, Report { due: 3, refreshed: 3, ..Report::default() });
}

#[tokio::test]
async fn many_connections_of_one_tenant_refused_alike_raise_one_tenant_incident() {
    use ms_oauth::events::EventKind;
    use ms_oauth::metrics::name;
    let app = spawn_app().await;
    let cids: Vec<_> = (0..7).map(|_| new_cid()).collect();
    for cid in &cids {
        assert_eq!(app.connect(&Browser::new(), cid, Origin::Web, "work").await.finish.status, 200);
    }
    let tenant = app.connection(&cids[0]).await.unwrap().connection.tenant_id;
    let _ = app.events.take();
    // The tenant's administrator revokes every grant (AADSTS50173: grant revoked).
    app.standin.revoke_refresh_tokens(50173);
    app.clock.advance(Duration::from_secs(8 * DAY));
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report.needs_reauth, 7);

    let events = app.events.take();
    // Each connection still gets its own event (the platform flags each for a new sign-in)…
    let per_connection = events.iter().filter(|e| e.kind == EventKind::NeedsReauth).count();
    assert_eq!(per_connection, 7);
    // …and the operator gets one naming the tenant.
    let incidents: Vec<_> = events.iter().filter(|e| e.kind == EventKind::TenantFailing).collect();
    assert_eq!(incidents.len(), 1, "{events:?}");
    assert_eq!(incidents[0].tenant_id.as_deref(), Some(tenant.as_str()));
    // The refresher renews 8 at a time: whichever refusal declares the incident first names
    // the count it saw, the threshold or one counted a moment later.
    let counted = incidents[0].connections.unwrap();
    assert!((ms_oauth::tokens::INCIDENT_THRESHOLD..=7).contains(&counted), "{counted}");
    let reason = incidents[0].reason.as_deref().unwrap();
    assert!(reason.starts_with("sign_in_again:") && reason.contains("AADSTS50173"), "{reason}");
    assert_eq!(app.metrics.count(name::TENANT_INCIDENT, &[("Class", "sign_in_again")]), 1);

    // Fewer than five alike in a window is no incident: one more refused connection, an hour
    // later (sign-ins still work; only refreshes are refused).
    let late = new_cid();
    assert_eq!(app.connect(&Browser::new(), &late, Origin::Web, "work").await.finish.status, 200);
    app.make_due(&late).await;
    app.clock.advance(Duration::from_secs(3600));
    assert_eq!(app.refresher.run().await.unwrap().needs_reauth, 1);
    assert!(app.events.take().iter().all(|e| e.kind != EventKind::TenantFailing));
}
