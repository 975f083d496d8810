//! `akoauth app` and `akoauth consent-link`, run as the operator runs them (the built binary,
//! the functions' environment), against the app under test.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

use ms_oauth::config;
use ms_oauth::testing::certs;
use ms_oauth_tests::aws::workspace_root;
use ms_oauth_tests::recorder::AwsCall;
use ms_oauth_tests::standin::{AppRegistration, OTHER_TENANT};

use crate::apps::{DAEMON_CLIENT, PRIVATE_CLIENT, admin_decides};
use crate::helpers::*;

/// The akoauth binary, built once per test run.
fn binary() -> &'static std::path::Path {
    static BINARY: OnceLock<std::path::PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "ms-oauth", "--bin", "akoauth"])
            .current_dir(workspace_root())
            .status()
            .expect("cargo build akoauth");
        assert!(status.success(), "akoauth did not build");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        target.join("debug/akoauth")
    })
}

/// Runs akoauth with the functions' environment for `app`; exit success, stdout, stderr.
/// Asynchronously: the stand-ins it talks to run on this test's runtime.
async fn akoauth(app: &TestApp, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    akoauth_with(app, args, stdin, &[]).await
}

/// The same with some of the environment changed.
async fn akoauth_with(
    app: &TestApp,
    args: &[&str],
    stdin: Option<&str>,
    changed: &[(&str, &str)],
) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(binary());
    command
        .args(args)
        .env_clear()
        .env(config::WEBHOOK_ADDRESS, &app.address)
        .env(config::MICROSOFT_CLIENT_ID, CLIENT_ID)
        .env(config::MICROSOFT_CLIENT_SECRET_ARN, &app.client_secret_arn)
        .env(config::MICROSOFT_AUTHORITY_HOST, app.standin.url())
        .env(config::MICROSOFT_GRAPH_URL, app.standin.url())
        .env(config::OAUTH_TABLE_NAME, &app.table)
        .env(config::KEY_SHARES_TABLE_NAME, &app.shares_table)
        .env(config::TOKEN_KMS_KEY_ID, &app.kms_key)
        .env(config::START_LINK_KEY, &app.start_key)
        .env("AWS_ENDPOINT_URL", &app.aws_endpoint)
        .env("AWS_REGION", ms_oauth_tests::aws::LOCAL_REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("USER", "operator");
    for (name, value) in changed {
        command.env(name, value);
    }
    finish(command, stdin).await
}

/// Runs `command` with `stdin`: exit success, stdout, stderr.
async fn finish(
    mut command: tokio::process::Command,
    stdin: Option<&str>,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("akoauth runs");
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or("").as_bytes()).await.expect("stdin");
    }
    let out = child.wait_with_output().await.expect("akoauth output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_operator_sets_a_daemon_app_gets_consent_and_reads_its_token() {
    // Built before the app starts: its test clock stands still, and a link signed minutes
    // later (a first build) would look issued in the future.
    binary();
    let app = spawn_app().await;
    let cid = new_cid();
    let secret = format!("dm~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(AppRegistration {
        client_id: DAEMON_CLIENT.into(),
        home_tenant: OTHER_TENANT.into(),
        secrets: vec![secret.clone()],
        redirect_uris: vec![format!("{}{}", app.address, config::REDIRECT_PATH)],
        ..AppRegistration::default()
    });
    let cid_arg = cid.to_string();
    let set = [
        "app",
        "set",
        "--cid",
        &cid_arg,
        "--auth-type",
        "daemonApp",
        "--client-id",
        DAEMON_CLIENT,
        "--tenant-id",
        OTHER_TENANT,
        "--client-secret-file",
        "-",
    ];
    let (ok, out, err) = akoauth(&app, &set, Some(&format!("{secret}\n"))).await;
    assert!(!ok, "{out}");
    assert!(err.contains("admin_consent") && err.contains("akoauth consent-link"), "{err}");

    let (ok, link, err) = akoauth(&app, &["consent-link", "--cid", &cid_arg], None).await;
    assert!(ok, "{err}");
    let link = link.trim();
    assert!(link.starts_with(&format!("{}{}?", app.address, config::ADMIN_CONSENT_PATH)), "{link}");
    let admin = Browser::new();
    let to_microsoft = app.start(&admin, link).await;
    assert_eq!(to_microsoft.status, 302, "{}", to_microsoft.body);
    let ready =
        admin_decides(&app, &admin, to_microsoft.location.as_deref().unwrap(), "accept").await;
    assert_page(&ready, 200, "the connection is ready");

    let (ok, shown, err) = akoauth(&app, &["app", "show", "--cid", &cid_arg], None).await;
    assert!(ok, "{err}");
    assert!(
        shown.contains(DAEMON_CLIENT) && shown.contains("\"credential\": \"secret\""),
        "{shown}"
    );
    let (ok, token, err) = akoauth(&app, &["token", "--cid", &cid_arg], None).await;
    assert!(ok, "{err}");
    assert!(token.starts_with("eyJ0eXAi.stand-in-app."), "an app token: {token}");
    for text in [&out, &err, &shown, &token] {
        assert!(!text.contains(&secret), "the secret was printed");
    }
}

#[tokio::test]
async fn an_operator_sets_a_private_app_with_a_certificate_file_and_removes_it() {
    binary();
    let app = spawn_app().await;
    let cid = new_cid();
    let cert = certs::valid_certificate("private.fabrikam.example");
    app.standin.register_app(AppRegistration {
        client_id: PRIVATE_CLIENT.into(),
        home_tenant: OTHER_TENANT.into(),
        certificates: vec![cert.certificate_pem.clone()],
        redirect_uris: vec![format!("{}{}", app.address, config::REDIRECT_PATH)],
        ..AppRegistration::default()
    });
    let dir = std::env::temp_dir().join(format!("akoauth-{}", ms_oauth_tests::random_base32(8)));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("app.pem");
    std::fs::write(&file, cert.bundle()).unwrap();
    let cid_arg = cid.to_string();
    let path = file.to_string_lossy().into_owned();
    let set = [
        "app",
        "set",
        "--cid",
        &cid_arg,
        "--auth-type",
        "oauthPrivate",
        "--client-id",
        PRIVATE_CLIENT,
        "--tenant-id",
        OTHER_TENANT,
        "--certificate-file",
        &path,
    ];
    let (ok, out, err) = akoauth(&app, &set, None).await;
    assert!(ok, "{err}");
    assert!(out.contains("certificate_thumbprint") && !out.contains("PRIVATE KEY"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
    let flow = app.connect(&Browser::new(), &cid, ms_oauth::domain::Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);

    // Both credentials at once, or none, is refused before anything runs.
    let both = [
        "app",
        "set",
        "--cid",
        &cid_arg,
        "--auth-type",
        "oauthPrivate",
        "--client-id",
        PRIVATE_CLIENT,
        "--client-secret-file",
        "-",
        "--certificate-file",
        "-",
    ];
    assert!(!akoauth(&app, &both, None).await.0);
    let none = [
        "app",
        "set",
        "--cid",
        &cid_arg,
        "--auth-type",
        "oauthPrivate",
        "--client-id",
        PRIVATE_CLIENT,
    ];
    assert!(!akoauth(&app, &none, None).await.0);

    let (ok, out, err) = akoauth(&app, &["app", "remove", "--cid", &cid_arg], None).await;
    assert!(ok, "{err}");
    assert!(out.contains("back to the server-wide app"), "{out}");
    assert!(app.connection(&cid).await.is_none());
}

#[tokio::test]
async fn stats_count_connections_by_status_class_and_tenant() {
    binary();
    let app = spawn_app().await;
    let cids: Vec<_> = (0..3).map(|_| new_cid()).collect();
    for (cid, account) in cids.iter().zip(["work", "work", "personal"]) {
        let flow = app.connect(&Browser::new(), cid, ms_oauth::domain::Origin::Web, account).await;
        assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    }
    // One grant dies: its next refresh marks it needs_reauth.
    app.standin.revoke_refresh_tokens(50173);
    let forced = format!("{}/connections/{}/token?force_refresh=true", app.api_address, cids[0]);
    assert_eq!(reqwest::get(forced).await.unwrap().status(), 409);
    let work_tenant = app.connection(&cids[0]).await.unwrap().connection.tenant_id;

    let (ok, out, err) = akoauth(&app, &["stats", "--top", "1"], None).await;
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(stats["connections"], 3);
    assert_eq!(stats["by_status"], serde_json::json!({"ok": 2, "needs_reauth": 1}));
    assert_eq!(stats["needs_reauth_by_class"], serde_json::json!({"sign_in_again": 1}));
    assert_eq!(stats["by_auth_type"], serde_json::json!({"oauthDefault": 3}));
    assert_eq!(stats["tenants"], 2);
    assert_eq!(
        stats["top_tenants"],
        serde_json::json!([{"tenant_id": work_tenant, "connections": 2, "needs_reauth": 1}])
    );
    // Progress goes to stderr, so stdout stays the answer alone.
    assert!(err.contains("read 3 connections"), "{err}");
}

#[tokio::test]
async fn audit_prints_a_connections_trail_from_the_log_group_once_per_act_in_order() {
    use ms_oauth::audit::{AUDIT_SOURCE, Act, Actor, AuditEvent};
    binary();
    let app = spawn_app().await;
    let sdk = ms_oauth_tests::aws::sdk_config(&app.aws_endpoint).await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk);
    let group = format!("/aws/events/oauth-audit-{}", ms_oauth_tests::random_base32(10));
    logs.create_log_group().log_group_name(&group).send().await.unwrap();
    logs.create_log_stream().log_group_name(&group).log_stream_name("s").send().await.unwrap();

    let cid = new_cid();
    let other = new_cid();
    let now = time::OffsetDateTime::now_utc();
    let event = |act, id: &str, cid, seconds, version| {
        let mut e = AuditEvent::new(
            act,
            &[id],
            now - time::Duration::seconds(seconds),
            cid,
            Actor::Refresher,
            "refreshed",
        );
        e.connection_version = Some(version);
        e
    };
    let later = event(Act::Refreshed, "b", &cid, 10, 3);
    let earlier = event(Act::Refreshed, "a", &cid, 60, 2);
    let elsewhere = event(Act::Refreshed, "c", &other, 30, 5);
    // As EventBridge writes them into the log group: the whole event, detail inside. The
    // later act was delivered twice.
    let envelope = |e: &AuditEvent| {
        serde_json::json!({
            "version": "0", "id": ms_oauth_tests::random_base32(12), "detail-type": e.act.detail_type(),
            "source": AUDIT_SOURCE, "account": "000000000000", "time": e.at,
            "region": "us-east-1", "resources": [], "detail": e,
        })
        .to_string()
    };
    let millis = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap();
    let lines = [
        envelope(&later),
        envelope(&earlier),
        envelope(&later),
        envelope(&elsewhere),
        format!("not json {cid}"),
    ];
    let log_events = lines.iter().map(|message| {
        aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
            .timestamp(millis)
            .message(message)
            .build()
            .unwrap()
    });
    logs.put_log_events()
        .log_group_name(&group)
        .log_stream_name("s")
        .set_log_events(Some(log_events.collect()))
        .send()
        .await
        .unwrap();

    let cid_arg = cid.to_string();
    let (ok, out, err) =
        akoauth(&app, &["audit", "--cid", &cid_arg, "--log-group", &group], None).await;
    assert!(ok, "{err}");
    let printed: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).expect("one JSON event per line")).collect();
    assert_eq!(printed.len(), 2, "{out}");
    assert_eq!(printed[0]["event_id"], earlier.event_id.as_str());
    assert_eq!(printed[1]["event_id"], later.event_id.as_str());
    assert_eq!(printed[1]["connection_version"], 3);
    assert!(err.contains("searched"), "{err}");

    // A connection with nothing kept says so; a missing log group is an error.
    let none = new_cid().to_string();
    let (ok, out, _) = akoauth(&app, &["audit", "--cid", &none, "--log-group", &group], None).await;
    assert!(ok && out.contains("no audit events"), "{out}");
    let (ok, _, err) =
        akoauth(&app, &["audit", "--cid", &cid_arg, "--log-group", "/no/such/group"], None).await;
    assert!(!ok && err.contains("/no/such/group"), "{err}");
}

#[tokio::test]
async fn reseal_moves_every_connection_to_a_new_key_leaving_busy_ones_for_the_next_run() {
    use ms_oauth::store::{DynamoStore, Store};
    binary();
    let app = spawn_app().await;
    let cids: Vec<_> = (0..3).map(|_| new_cid()).collect();
    for cid in &cids {
        let flow = app.connect(&Browser::new(), cid, ms_oauth::domain::Origin::Web, "work").await;
        assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    }
    let old_key = app.connection(&cids[0]).await.unwrap().connection.secrets.key_id;
    // A connection's own app, its credential sealed under the old key too.
    let with_app = new_cid();
    let app_secret = format!("pv~{}", ms_oauth_tests::random_base32(30));
    let body = serde_json::json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "client_secret": app_secret});
    assert_eq!(crate::apps::set_app(&app, &with_app, body).await.0, 200);
    let alias = format!("alias/oauth-next-{}", ms_oauth_tests::random_base32(8));
    let new_key = ms_oauth_tests::aws::ensure_kms_key(&app.kms, &alias).await.unwrap();
    let new_arn = app
        .kms
        .describe_key()
        .key_id(&new_key)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    assert_ne!(old_key, new_arn);
    // One connection is being refreshed: it is left alone, and the run says so.
    let store = DynamoStore::new(app.dynamodb.clone(), app.table.clone());
    let busy = app.connection(&cids[2]).await.unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(store.acquire_lease(&cids[2], busy.version, "refresher", now + 60, now).await.unwrap());

    let with_new_key = [(config::TOKEN_KMS_KEY_ID, alias.as_str())];
    let (ok, out, err) = akoauth_with(&app, &["reseal"], None, &with_new_key).await;
    assert!(!ok, "a busy connection makes the run fail: {out}");
    assert!(err.contains(r#""resealed":2"#) && err.contains(r#""busy":1"#), "{err}");
    assert!(err.contains("1 apps: 1 sealed anew"), "{err}");
    assert!(err.contains("3 connections: 2 sealed anew, 0 already current, 1 busy"), "{err}");

    // The refresh ends; the next run finishes the job, and one after it finds nothing to do.
    store.release_lease(&cids[2], "refresher").await.unwrap();
    let (ok, out, err) = akoauth_with(&app, &["reseal"], None, &with_new_key).await;
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (summary["resealed"].as_u64(), summary["already_current"].as_u64()),
        (Some(1), Some(2))
    );
    let (ok, out, _) = akoauth_with(&app, &["reseal"], None, &with_new_key).await;
    assert!(ok);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (summary["resealed"].as_u64(), summary["already_current"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(summary["apps"]["already_current"], 1);
    // The app's credential opens from its new sealing, unchanged.
    let keys = ms_oauth::crypto::KmsDataKeys::new(app.kms.clone(), app.kms_key.clone());
    let opened = ms_oauth::apps::open_app(&store, &keys, &with_app, None).await.unwrap().unwrap();
    let ms_oauth::apps::Credential::Secret(secret) = &opened.auth.credential else {
        panic!("a secret")
    };
    assert_eq!(secrecy::ExposeSecret::expose_secret(secret), app_secret);
    let sealed_app = store.get_app(&with_app).await.unwrap().unwrap();
    assert_eq!(sealed_app.app.credential_sealed.key_id, new_arn);

    // Every value now names the new key; the functions (still sealing with the old one) open
    // them, by the key each value names, and serve the same tokens.
    for cid in &cids {
        let stored = app.connection(cid).await.unwrap();
        assert_eq!(stored.connection.secrets.key_id, new_arn);
        let token = format!("{}/connections/{cid}/token", app.api_address);
        assert_eq!(reqwest::get(&token).await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn during_a_refresh_outage_twelve_operators_forcing_a_refresh_make_one_and_all_say_it_failed()
{
    binary();
    let app = spawn_app().await;
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, ms_oauth::domain::Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    let old = app.secret_vars(&app.connection(&cid).await.unwrap()).await;
    let old = old["oauth_access_token"].as_str().unwrap().to_owned();
    app.standin.set_refresh_fault(Some(ms_oauth_tests::standin::Fault::Status(503)));
    let before = app.standin.calls().refresh_requests;
    let cid_arg = cid.to_string();
    let args = ["token", "--cid", cid_arg.as_str(), "--force-refresh"];
    let runs = (0..12).map(|_| akoauth(&app, &args, None));
    let results = futures::future::join_all(runs).await;
    let calls = app.standin.calls().refresh_requests - before;
    assert!((1..=2).contains(&calls), "{calls} refresh calls for 12 forced refreshes");
    for (ok, out, err) in results {
        assert!(!ok, "a forced refresh that failed must not succeed: {out}");
        assert!(!out.contains(&old), "the old token printed as new");
        assert!(err.contains("could not be refreshed (transient)"), "{err}");
    }
    // A plain read still prints the stored token (it is valid), without a warning: it was
    // not due.
    let (ok, out, err) = akoauth(&app, &["token", "--cid", &cid_arg], None).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), old);
    assert!(!err.contains("warning"), "{err}");
}

/// The operator of the policy test: a role of `OperatorRoleArns`.
const ONCALL: &str = "arn:aws:iam::123456789012:role/oncall";

/// Runs akoauth as an operator of `app`'s deployment: configured from nothing but the stack's
/// `OperatorEnvironment` output (its public address this machine's), reaching AWS through
/// `recorder`.
async fn as_operator(
    app: &TestApp,
    recorder: &ms_oauth_tests::recorder::Recorder,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    let deployed = app.deployed.as_ref().expect("a deployment of the template");
    let output = deployed.deployment.output("OperatorEnvironment").expect("an output");
    let mut command = tokio::process::Command::new(binary());
    command.args(args).env_clear();
    for pair in output.split(' ') {
        let (name, value) = pair.split_once('=').expect("NAME=value");
        command.env(name, value);
    }
    command
        .env(config::WEBHOOK_ADDRESS, &app.address)
        .env("AWS_ENDPOINT_URL", recorder.url())
        .env("AWS_REGION", ms_oauth_tests::aws::LOCAL_REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("USER", "oncall");
    finish(command, stdin).await
}

#[tokio::test]
async fn an_operator_role_configured_from_the_stack_may_do_what_akoauth_does_and_no_more() {
    use ms_oauth_tests::iam::{Decision, authorize, unused_grants};
    binary();
    let app = spawn_app_with(AppOptions {
        from_template: true,
        parameters: vec![("OperatorRoleArns", ONCALL.to_owned())],
        ..AppOptions::default()
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let recorder =
        ms_oauth_tests::recorder::Recorder::spawn_routed(listener, &app.aws_endpoint, None)
            .expect("recorder");
    let cids: Vec<_> = (0..3).map(|_| new_cid()).collect();
    for cid in &cids {
        let flow = app.connect(&Browser::new(), cid, ms_oauth::domain::Origin::Web, "work").await;
        assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    }
    crate::policies::seal_the_earlier_way(&app, &cids[1]).await;
    let arg = |i: usize| cids[i].to_string();
    let (a, b, c) = (arg(0), arg(1), arg(2));
    // Every operator command, as the README gives them.
    let secret = format!("pv~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(AppRegistration {
        client_id: PRIVATE_CLIENT.into(),
        home_tenant: OTHER_TENANT.into(),
        secrets: vec![secret.clone()],
        redirect_uris: vec![format!("{}{}", app.address, config::REDIRECT_PATH)],
        ..AppRegistration::default()
    });
    let own = new_cid().to_string();
    let set = [
        "app",
        "set",
        "--cid",
        &own,
        "--auth-type",
        "oauthPrivate",
        "--client-id",
        PRIVATE_CLIENT,
        "--tenant-id",
        OTHER_TENANT,
        "--client-secret-file",
        "-",
    ];
    let runs: Vec<(Vec<&str>, Option<String>)> = vec![
        (vec!["status", "--cid", &a], None),
        (vec!["token", "--cid", &a, "--force-refresh"], None),
        (vec!["token", "--cid", &b, "--force-refresh"], None),
        (set.to_vec(), Some(format!("{secret}\n"))),
        (vec!["app", "show", "--cid", &own], None),
        (vec!["stats"], None),
        (vec!["reseal"], None),
        (vec!["consent-link", "--cid", &c], None),
        (vec!["start-link", "--cid", &c, "--origin", "web"], None),
        (vec!["disconnect", "--cid", &c], None),
        (vec!["app", "remove", "--cid", &own], None),
    ];
    for (args, stdin) in &runs {
        let (ok, out, err) = as_operator(&app, &recorder, args, stdin.as_deref()).await;
        assert!(ok, "akoauth {args:?} as an operator: {err}{out}");
    }

    let deployment = &app.deployed.as_ref().unwrap().deployment;
    let iam = deployment.policy_statements("OperatorPolicy");
    let key_policies = deployment.key_policies();
    let decided: Vec<(AwsCall, Decision)> = recorder
        .calls()
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|call| {
            let decision = authorize(ONCALL, &iam, &key_policies, &call);
            (call, decision)
        })
        .collect();
    let refused: Vec<String> = decided
        .iter()
        .filter(|(_, d)| matches!(d, Decision::Denied(_)))
        .map(|(c, d)| format!("{} on {} {:?}: {d:?}", c.action, c.resource, c.context))
        .collect();
    assert_eq!(refused, Vec::<String>::new(), "what akoauth does that the stack does not allow");
    let mut unused = unused_grants("OperatorPolicy", &iam, &decided, "role", ONCALL);
    for (key, policy) in &key_policies {
        let on_key: Vec<(AwsCall, Decision)> =
            decided.iter().filter(|(c, _)| &c.resource == key).cloned().collect();
        unused.extend(unused_grants(&format!("oncall on {key}"), policy, &on_key, "key", ONCALL));
    }
    assert_eq!(unused, std::collections::BTreeSet::new(), "grants no operator command uses");
    // Another role, even of the same account, opens nothing.
    let someone = "arn:aws:iam::123456789012:role/someone-else";
    for (call, _) in decided.iter().filter(|(c, _)| c.action == "kms:Decrypt") {
        let decision = authorize(someone, &iam, &key_policies, call);
        assert!(matches!(decision, Decision::Denied(_)), "{someone} may {call:?}");
    }
}
