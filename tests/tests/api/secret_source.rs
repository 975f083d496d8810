//! Secrets as Secrets Manager really holds them: in the console's key/value form, and while
//! Secrets Manager is failing.

use std::time::Duration;

use ms_oauth::config::SecretSource;
use ms_oauth::secrets::CachedSecret;
use ms_oauth_tests::aws;
use ms_oauth_tests::chaos::ChaosProxy;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

async fn secret(value: &str) -> (String, aws_sdk_secretsmanager::Client) {
    let endpoint = aws::shared_endpoint().expect("AWS emulator");
    let client = aws_sdk_secretsmanager::Client::new(&aws::sdk_config(&endpoint).await);
    let name = format!("oauth-test/{}/secret", ms_oauth_tests::random_base32(10));
    let arn = aws::ensure_secret(&client, &name, value).await.expect("secret");
    (arn, client)
}

#[tokio::test]
async fn a_secret_saved_as_the_consoles_key_value_pair_is_read_as_its_value() {
    let (arn, client) = secret(r#"{"client_secret":"cs~from-the-console"}"#).await;
    let cached = CachedSecret::new(SecretSource::SecretsManager { arn }, Some(client.clone()));
    assert_eq!(cached.get().await.unwrap().expose_secret(), "cs~from-the-console");

    let (arn, _) = secret(r#"{"a":"first-v4lue","b":"second-v4lue"}"#).await;
    let two = CachedSecret::new(SecretSource::SecretsManager { arn }, Some(client));
    let error = two.get().await.unwrap_err().to_string();
    assert!(error.contains("2 keys"), "{error}");
    assert!(!error.contains("v4lue"), "{error}");
}

#[tokio::test]
async fn a_secrets_manager_outage_after_the_cache_went_stale_keeps_the_cached_value() {
    let (arn, _) = secret("cs~still-good").await;
    let endpoint = aws::shared_endpoint().expect("AWS emulator");
    let upstream = endpoint.trim_start_matches("http://").parse().expect("emulator address");
    let proxy = ChaosProxy::spawn(TcpListener::bind("127.0.0.1:0").await.unwrap(), upstream)
        .expect("proxy");
    let through_proxy = aws_sdk_secretsmanager::Client::new(&aws::sdk_config(&proxy.url()).await);
    let source = || SecretSource::SecretsManager { arn: arn.clone() };
    let ttl = Duration::from_millis(200);
    let cached = CachedSecret::with_ttl(source(), Some(through_proxy.clone()), ttl);
    assert_eq!(cached.get().await.unwrap().expose_secret(), "cs~still-good");

    // Secrets Manager goes away; the cached value goes stale.
    proxy.set(1.0, 0.0);
    tokio::time::sleep(ttl * 2).await;
    let refused_before = proxy.counts().refused;
    assert_eq!(cached.get().await.unwrap().expose_secret(), "cs~still-good");
    assert!(proxy.counts().refused > refused_before, "Secrets Manager was asked and failed");
    // Without a value read before, there is nothing to serve: the error stands.
    let never_read = CachedSecret::with_ttl(source(), Some(through_proxy), ttl);
    assert!(never_read.get().await.is_err());
    proxy.set(0.0, 0.0);
}
