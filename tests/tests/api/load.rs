//! Short load and fault runs (the long ones are `make bench-load`): many sign-ins at once
//! through the local stack, each connection checked against what the stand-in issued.

use std::time::Duration;

use ms_oauth_tests::aws;
use ms_oauth_tests::load::{Faults, LoadOptions, LoadStack};

async fn stack() -> LoadStack {
    let moto = aws::shared_endpoint().expect("moto");
    LoadStack::start(&moto).await.expect("load stack")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sign_ins_each_get_their_own_tokens_and_identity() {
    let stack = stack().await;
    let report =
        stack.run(&LoadOptions { flows: 48, concurrency: 16, faults: None }).await.expect("run");
    assert_eq!(report.violations(), Vec::<String>::new(), "{:?}", report.error_pages);
    assert_eq!(report.connected, 48, "error pages: {:?}", report.error_pages);
    assert_eq!(report.token_requests, 48, "one code exchange per sign-in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sign_ins_under_faults_end_on_clear_pages_and_never_mix_or_half_write() {
    let stack = stack().await;
    let faults = Faults { microsoft: 0.15, aws_refuse: 0.05, aws_cut: 0.05 };
    let report = stack
        .run(&LoadOptions { flows: 80, concurrency: 16, faults: Some(faults) })
        .await
        .expect("run");
    // Every failure is a clear page; no connection is lost, mixed or half-written; no code
    // is presented twice.
    assert_eq!(report.violations(), Vec::<String>::new(), "{:?}", report.error_pages);
    // The faults really happened, or this test would prove nothing.
    assert!(report.microsoft_faults_injected > 0, "{report:?}");
    assert!(report.aws.refused + report.aws.cut > 0, "{report:?}");
    assert!(report.connected < report.flows, "{report:?}");
    assert!(report.connected > 0, "{report:?}");
    assert!(report.token_requests <= report.flows, "{report:?}");
}

/// One sign-in with the answer to one AWS request lost; the SDK retries it. The retry must
/// find its own earlier write and carry on, not report a spent or duplicate state.
async fn sign_in_with_lost_answer(operation: &str) {
    let stack = stack().await;
    let one = LoadOptions { flows: 1, concurrency: 1, faults: None };
    // Warm: the client secret is cached, so the redirect's first AWS call is the consume.
    assert_eq!(stack.run(&one).await.expect("warm-up").connected, 1);
    let cut_before = stack.proxy.counts().cut;
    stack.proxy.cut_next_answer_to(operation);
    let report = stack.run(&one).await.expect("run");
    assert_eq!(stack.proxy.counts().cut, cut_before + 1, "the answer was not cut");
    assert_eq!(report.violations(), Vec::<String>::new());
    assert_eq!(report.connected, 1, "error pages: {:?}", report.error_pages);
}

#[tokio::test]
async fn a_lost_answer_to_the_grant_spend_does_not_fail_the_start_link() {
    // The PutItem recording the used grant is the only request carrying `spent_by`.
    sign_in_with_lost_answer("spent_by").await;
}

#[tokio::test]
async fn a_lost_answer_to_the_state_write_does_not_fail_the_start() {
    // The state item is the only PutItem carrying the PKCE verifier.
    sign_in_with_lost_answer("pkce_verifier").await;
}

#[tokio::test]
async fn a_lost_answer_to_the_state_consume_does_not_fail_the_redirect() {
    sign_in_with_lost_answer("DynamoDB_20120810.UpdateItem").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_the_client_secret_in_the_middle_of_a_load_run_fails_no_sign_in() {
    // Instances re-read the secret every 100 ms here (5 minutes on Lambda), so a run sees
    // every step of a rotation.
    let moto = aws::shared_endpoint().expect("moto");
    let stack = LoadStack::start_with_secret_ttl(&moto, Duration::from_millis(100))
        .await
        .expect("load stack");
    let rotated = "cs~rotated~0123456789abcdefghijklmnopqrstuv";
    let put = |value: &'static str| {
        let client = stack.secretsmanager.clone();
        let arn = stack.client_secret_arn.clone();
        async move { aws::ensure_secret(&client, &arn, value).await.expect("new version") }
    };
    let run = stack.run(&LoadOptions { flows: 400, concurrency: 8, faults: None });
    // Each step waits for sign-ins to have gone on meanwhile (token requests at the
    // stand-in), so the rotation lands in the middle of the run however fast the machine is.
    let after_more_sign_ins = |count: usize| {
        let standin = stack.standin.clone();
        async move {
            let target = standin.calls().token_requests + count;
            while standin.calls().token_requests < target {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let rotate = async {
        after_more_sign_ins(60).await;
        // 1. The new value is stored before Microsoft takes it: instances that read it are
        //    refused and fall back to the previous version.
        put(rotated).await;
        after_more_sign_ins(80).await;
        // 2. Entra ID takes it too, 3. and the old one is deleted there: instances still
        //    holding the old value are refused and read the current one again.
        stack.standin.accept_secret_too(rotated);
        after_more_sign_ins(40).await;
        stack.standin.rotate_secret(rotated);
    };
    let (report, ()) = tokio::join!(run, rotate);
    let report = report.expect("run");
    assert_eq!(report.violations(), Vec::<String>::new(), "{:?}", report.error_pages);
    assert_eq!(report.connected, 400, "error pages: {:?}", report.error_pages);
    // The rotation was felt (Microsoft refused a secret), and no sign-in failed for it.
    assert!(stack.standin.calls().refused_client_secrets > 0, "{report:?}");
}
