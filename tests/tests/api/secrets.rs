//! Secrets never reach a log line, a URL we emit, a page, or the table in plaintext.

use ms_oauth::domain::Origin;

use crate::helpers::*;

/// The value of the one cookie whose name starts with `prefix`.
fn cookie_starting(browser: &Browser, prefix: &str) -> String {
    let cookies = browser.cookies();
    let mut matching = cookies.iter().filter(|(name, _)| name.starts_with(prefix));
    let (_, value) = matching.next().expect("cookie");
    assert!(matching.next().is_none(), "one {prefix} cookie");
    value.clone()
}

fn verifier_of(secrets: &[(&str, String)]) -> String {
    secrets.iter().find(|(what, _)| *what == "PKCE verifier").map(|(_, s)| s.clone()).unwrap()
}

#[tokio::test]
async fn no_secret_appears_in_logs_urls_pages_or_the_stored_item() {
    let app = spawn_app().await;
    let browser = Browser::new();
    let cid = new_cid();

    let link = app.start_link(&cid, Origin::Web);
    let grant = link.split("grant=").nth(1).unwrap().to_owned();
    let confirmation = browser.get(&link).await;
    assert_page(&confirmation, 200, "Connect a Microsoft account?");
    let ticket = ms_oauth_tests::startlink::confirm_ticket(&confirmation.body).unwrap();
    let confirm_nonce = cookie_starting(&browser, ms_oauth::state::CONFIRM_COOKIE_PREFIX);
    let start = app.confirm(&browser, &confirmation).await;
    let authorize_url = start.location.clone().unwrap();
    let authorize = url::Url::parse(&authorize_url).unwrap();
    let state = authorize.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    // The verifier only exists server-side: read it from the pending item.
    let items = app.items().await;
    let pending = items.iter().find(|i| i["kind"].as_s().unwrap() == "state").unwrap();
    let verifier = pending["pkce_verifier"].as_s().unwrap().clone();
    let nonce = browser
        .cookies()
        .iter()
        .find(|(name, _)| !name.starts_with(ms_oauth::state::CONFIRM_COOKIE_PREFIX))
        .map(|(_, value)| value.clone())
        .unwrap();

    let callback = app.consent(&browser, &authorize_url, "work").await;
    let finish = browser.get(&callback).await;
    assert_page(&finish, 200, "connected");
    // A failing flow too, so error paths are covered.
    app.standin.set_me_fault(Some(ms_oauth_tests::standin::Fault::Status(500)));
    let failed = app.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await;
    assert_eq!(failed.finish.status, 503);

    let issued = app.standin.issued_secrets();
    assert!(
        issued.len() >= 3 + 3,
        "codes, access and refresh tokens of both flows: {}",
        issued.len()
    );
    let mut secrets: Vec<(&str, String)> =
        issued.iter().map(|s| ("issued by the identity platform", s.clone())).collect();
    secrets.push(("state", state.clone()));
    secrets.push(("PKCE verifier", verifier));
    secrets.push(("browser nonce", nonce));
    secrets.push(("confirm nonce", confirm_nonce));
    secrets.push(("start grant", grant));
    secrets.push(("confirmation", ticket));
    secrets.push(("client secret", app.client_secret.clone()));
    secrets.push(("start-link key", app.start_key.clone()));

    // The connection's key share, in each form a careless line could print it.
    let stored = app.connection(&cid).await.unwrap();
    let share_id = stored.connection.secrets.share_id.clone().expect("a key share");
    let share = {
        use ms_oauth::crypto::KeyShares;
        app.key_shares().get(cid.as_str(), &share_id).await.unwrap().expect("the share")
    };
    let share_bytes = share.secret().to_vec();
    secrets.push(("key share (hex)", share_bytes.iter().map(|b| format!("{b:02x}")).collect()));
    secrets.push(("key share (bytes)", format!("{share_bytes:?}")));
    {
        use base64::Engine;
        secrets.push((
            "key share (base64)",
            base64::engine::general_purpose::STANDARD.encode(&share_bytes),
        ));
    }

    let logs = captured_logs();
    assert!(logs.contains(&cid.to_string()), "the flow's logs were captured");
    let raw_item = format!("{:?}", app.items().await);
    for (what, secret) in &secrets {
        assert!(!logs.contains(secret.as_str()), "{what} found in the logs");
        assert!(!finish.body.contains(secret.as_str()), "{what} found in the success page");
        assert!(!failed.finish.body.contains(secret.as_str()), "{what} found in the error page");
        for header in [&finish.headers, &failed.finish.headers] {
            assert!(
                !format!("{header:?}").contains(secret.as_str()),
                "{what} found in response headers"
            );
        }
        assert!(!raw_item.contains(secret.as_str()), "{what} found in the raw table");
    }
    // The two secrets that must never leave our side are not even in the authorize URL.
    assert!(!authorize_url.contains(&app.client_secret));
    assert!(
        !start.headers.get("location").unwrap().to_str().unwrap().contains(&verifier_of(&secrets))
    );

    // The raw item holds tokens only as ciphertext, yet they decrypt to what was issued.
    let decrypted = app.secret_vars(&stored).await;
    let access = decrypted["oauth_access_token"].as_str().unwrap();
    assert!(issued.contains(&access.to_owned()));
    assert!(!raw_item.contains(access));
    let binary: Vec<u8> = app
        .items()
        .await
        .iter()
        .flat_map(|item| item.values().cloned())
        .flat_map(|v| match v {
            aws_sdk_dynamodb::types::AttributeValue::M(m) => m.into_values().collect::<Vec<_>>(),
            other => vec![other],
        })
        .filter_map(|v| v.as_b().ok().map(|b| b.as_ref().to_vec()))
        .flatten()
        .collect();
    assert!(!binary.windows(access.len()).any(|w| w == access.as_bytes()));
    // The token table never holds a key share.
    assert!(!binary.windows(share_bytes.len()).any(|w| w == share_bytes.as_slice()));
}
