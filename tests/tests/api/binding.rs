//! Standalone start links name a user and a connection, open once, and start nothing until
//! the person at the browser confirms on our page: a link sent to someone else cannot put
//! their Microsoft account into the sender's connection without them seeing whose it is.

use std::time::Duration;

use ms_oauth::clock::Clock;
use ms_oauth::domain::Origin;
use ms_oauth::grant::StartGrant;

use crate::helpers::*;

/// A link minted by the platform for `user`'s connection `name`.
fn link_for(app: &TestApp, cid: &ms_oauth::domain::ConnectionId, user: &str, name: &str) -> String {
    app.start_link_for(&StartGrant::new(cid.clone(), Origin::Web, user, name).unwrap())
}

#[tokio::test]
async fn a_victim_opening_an_attackers_link_is_told_whose_connection_it_is_and_nothing_starts() {
    let app = spawn_app().await;
    let attackers = new_cid();
    let link = link_for(&app, &attackers, "mallory@example.com", "Mallory <sync> & co");

    // The victim opens the link sent to them.
    let victim = Browser::new();
    let page = victim.get(&link).await;
    assert_page(&page, 200, "Connect a Microsoft account?");
    for shown in [
        "Mallory &#60;sync&#62; &#38; co",
        "mallory@example.com",
        attackers.as_str(),
        "If someone sent you this link, close this page",
        "Continue to Microsoft",
    ] {
        assert!(page.body.contains(shown), "{shown:?} not on the page: {}", page.body);
    }
    // The page cannot be framed, and runs one script: the one that keeps its button
    // unpressable in the first moment (double-clickjacking). It has no form-action, which
    // browsers would apply to Microsoft's redirects after the post.
    let csp = page.header("content-security-policy");
    assert!(!csp.contains("form-action"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.body.matches("<script>").count(), 1);
    assert!(page.body.contains("b.disabled = true"), "{}", page.body);
    let confirm_cookie = page.header("set-cookie");
    for attr in [
        "__Secure-ms_oauth_confirm_",
        "HttpOnly",
        "; Secure",
        "SameSite=Strict",
        "Path=/oauth/start/",
    ] {
        assert!(confirm_cookie.contains(attr), "{attr} missing: {confirm_cookie}");
    }
    assert_eq!(app.pending_states().await, 0, "nothing starts before the confirmation");

    // The attacker's site posts the confirmation for the victim: a cross-site post carries
    // no SameSite=Strict cookie, and says where it comes from.
    let ticket = ms_oauth_tests::startlink::confirm_ticket(&page.body).unwrap();
    let form = [("ticket".to_owned(), ticket)];
    let post_url = format!("{}/oauth/start/microsoft", app.address);
    let from_elsewhere = Browser::new()
        .post_form_with(
            &post_url,
            &form,
            &[("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_page(&from_elsewhere, 403, "came from another site");
    let without_cookie = Browser::new().post_form_with(&post_url, &form, &[]).await;
    assert_page(&without_cookie, 403, "Confirm in the browser that opened the link");
    // Even with the victim's cookie, a post naming another site is refused.
    let with_cookie =
        victim.post_form_with(&post_url, &form, &[("origin", "https://evil.example")]).await;
    assert_page(&with_cookie, 403, "came from another site");
    assert_eq!(app.pending_states().await, 0);
    assert_eq!(app.standin.calls().authorize_tenants.len(), 0, "nobody was sent to Microsoft");

    // Opening the link and the refused posts spent nothing: it shows the same question again,
    // and still nothing has started.
    assert_page(&victim.get(&link).await, 200, "Connect a Microsoft account?");
    assert_eq!(app.pending_states().await, 0);
    assert_eq!(app.connections().await, 0);
}

#[tokio::test]
async fn the_success_page_repeats_who_connected_what() {
    let app = spawn_app().await;
    let browser = Browser::new();
    let cid = new_cid();
    let start = app.start(&browser, &link_for(&app, &cid, "ada@example.com", "Ada's mail")).await;
    assert_eq!(start.status, 302, "{}", start.body);
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    let finish = browser.get(&callback).await;
    assert_page(&finish, 200, "Microsoft account connected");
    for shown in ["Ada&#39;s mail", "ada@example.com", cid.as_str(), "adele.vance@contoso.example"]
    {
        assert!(finish.body.contains(shown), "{shown:?} not on the page: {}", finish.body);
    }
}

#[tokio::test]
async fn links_expire_after_a_minute_and_confirmations_after_ten() {
    let app = spawn_app().await;
    let cid = new_cid();

    let link = app.start_link(&cid, Origin::Web);
    app.clock.advance(Duration::from_secs(91));
    assert_page(&Browser::new().get(&link).await, 403, "expired");

    // Opened in time, confirmed too late.
    let browser = Browser::new();
    let page = browser.get(&app.start_link(&cid, Origin::Web)).await;
    assert_eq!(page.status, 200);
    app.clock.advance(Duration::from_secs(601));
    assert_page(&app.confirm(&browser, &page).await, 400, "took too long");
    assert_eq!(app.pending_states().await, 0);
}

#[tokio::test]
async fn a_confirmation_works_only_in_the_browser_that_opened_the_link() {
    let app = spawn_app().await;
    let opener = Browser::new();
    let page = opener.get(&app.start_link(&new_cid(), Origin::Web)).await;
    assert_eq!(page.status, 200);

    // Another browser presses the same button (same form, its own cookies).
    let other = Browser::new();
    assert_page(&app.confirm(&other, &page).await, 403, "Confirm in the browser that opened");
    // A tampered confirmation is refused as such.
    let mut tampered = page.clone();
    tampered.body =
        tampered.body.replacen(r#"name="ticket" value=""#, r#"name="ticket" value="x"#, 1);
    assert_page(&app.confirm(&opener, &tampered).await, 400, "not valid");
    assert_eq!(app.pending_states().await, 0);

    // The opener goes on; the confirmation is then used up with its cookie.
    let first = app.confirm(&opener, &page).await;
    assert_redirects_to(&first, &app.standin.url());
    assert!(
        opener
            .cookies()
            .keys()
            .all(|name| !name.starts_with(ms_oauth::state::CONFIRM_COOKIE_PREFIX))
    );
    assert_page(&app.confirm(&opener, &page).await, 403, "Confirm in the browser that opened");
    assert_eq!(app.pending_states().await, 1);
}

#[tokio::test]
async fn each_grant_is_recorded_once_and_only_until_it_expires() {
    let app = spawn_app().await;
    let browser = Browser::new();
    let page = browser.get(&app.start_link(&new_cid(), Origin::Web)).await;
    assert_eq!(page.status, 200);
    let grant_items = || async {
        app.items()
            .await
            .into_iter()
            .filter(|i| i["kind"].as_s().is_ok_and(|k| k == "grant"))
            .count()
    };
    assert_eq!(grant_items().await, 0, "opening a link records nothing");
    assert_eq!(app.confirm(&browser, &page).await.status, 302);
    let grants: Vec<_> = app
        .items()
        .await
        .into_iter()
        .filter(|i| i["kind"].as_s().is_ok_and(|k| k == "grant"))
        .collect();
    assert_eq!(grants.len(), 1);
    let item = &grants[0];
    assert!(item["pk"].as_s().unwrap().starts_with("grant#"));
    let expires: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
    let now = app.clock.now().unix_timestamp();
    // As long as a confirmation of it can last (the grant's minute plus the clock-skew
    // allowance) plus the skew again, then DynamoDB's TTL removes it.
    assert!((now + 60..=now + 125).contains(&expires), "{expires} vs {now}");
}

/// Mail scanners (Defender Safe Links, Proofpoint, Mimecast) and chat unfurlers fetch every
/// link before the person it was sent to: a start link they open stays usable, and of the
/// browsers that then confirm it exactly one goes on.
#[tokio::test]
async fn a_link_scanner_opening_a_start_link_first_leaves_it_usable_and_one_confirmation_wins() {
    let app = spawn_app().await;
    let cid = new_cid();
    let link = app.start_link(&cid, Origin::Web);
    for _ in 0..3 {
        assert_page(&Browser::new().get(&link).await, 200, "Connect a Microsoft account?");
    }
    assert_eq!(app.pending_states().await, 0);

    let (person, other) = (Browser::new(), Browser::new());
    let (mine, theirs) = tokio::join!(person.get(&link), other.get(&link));
    assert_page(&mine, 200, "Connect a Microsoft account?");
    assert_page(&theirs, 200, "Connect a Microsoft account?");
    let (a, b) = tokio::join!(app.confirm(&person, &mine), app.confirm(&other, &theirs));
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [302, 403], "{} / {}", a.body, b.body);
    let refused = if a.status == 403 { &a } else { &b };
    assert_page(refused, 403, "already used");
    assert_eq!(app.pending_states().await, 1);

    // Spent now: opening it again says so at once.
    assert_page(&Browser::new().get(&link).await, 403, "already used");
    let winner = if a.status == 302 { (&person, &a) } else { (&other, &b) };
    let callback = app.consent(winner.0, winner.1.location.as_deref().unwrap(), "work").await;
    assert_page(&winner.0.get(&callback).await, 200, "connected");
}
