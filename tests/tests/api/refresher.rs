//! The scheduled refresher: exactly the due connections, through the index.

use std::time::Duration;

use ms_oauth::domain::Origin;
use token_refresher::Report;

use crate::helpers::*;

#[tokio::test]
async fn the_refresher_renews_exactly_the_due_connections() {
    let app = spawn_app().await;
    let early = new_cid();
    app.connect(&Browser::new(), &early, Origin::Web, "work").await;
    app.clock.advance(Duration::from_secs(30 * 60));
    let late = new_cid();
    app.connect(&Browser::new(), &late, Origin::Web, "personal").await;

    // Nothing is due yet.
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report::default());

    // 56 minutes after the first sign-in, only its token is inside the refresh margin.
    app.clock.advance(Duration::from_secs(26 * 60));
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 1, refreshed: 1, ..Report::default() });
    assert_eq!(app.connection(&early).await.unwrap().version, 2);
    assert_eq!(app.connection(&late).await.unwrap().version, 1);
    assert_eq!(app.standin.calls().refreshes, 1);

    // The renewed connection is not due again until its new token nears expiry.
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report::default());
}

#[tokio::test]
async fn a_dead_grant_leaves_the_refresh_index() {
    let app = spawn_app().await;
    let cid = new_cid();
    app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    app.standin.revoke_refresh_tokens(50173);
    app.clock.advance(Duration::from_secs(56 * 60));

    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 1, needs_reauth: 1, ..Report::default() });
    let stored = app.connection(&cid).await.unwrap();
    assert_eq!(stored.connection.status, "needs_reauth");
    assert!(stored.connection.refresh_queue.is_none());

    // Hours later it is still not picked up: no retries against a dead grant.
    app.clock.advance(Duration::from_secs(6 * 3600));
    assert_eq!(app.refresher.run().await.unwrap(), Report::default());
    assert_eq!(app.standin.calls().refreshes, 1);
}

#[tokio::test]
async fn transient_failures_are_counted_and_retried_next_run() {
    let app = spawn_app().await;
    let cid = new_cid();
    app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    app.standin.set_token_fault(Some(ms_oauth_tests::standin::Fault::Status(500)));
    app.clock.advance(Duration::from_secs(56 * 60));
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 1, failed: 1, ..Report::default() });

    app.standin.set_token_fault(None);
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 1, refreshed: 1, ..Report::default() });
}
