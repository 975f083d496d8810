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

/// Opens a start link signed with `key` at `clock`'s time; the status of the answer.
async fn open(service: &oauth_start::StartService, key: &str, clock: &MovableClock) -> u16 {
    use ms_oauth::domain::Origin;
    use ms_oauth::grant::{GrantKey, StartGrant};
    let cid = ms_oauth_tests::new_connection_id();
    let grant = StartGrant::new(cid.clone(), Origin::Web, "ada", "Ada's mail").unwrap();
    let now = ms_oauth::clock::Clock::now(clock).unix_timestamp();
    let token = GrantKey::new(key.to_owned().into()).unwrap().sign(&grant, now).unwrap();
    let uri =
        format!("https://api.example.com/oauth/start/microsoft?cid={cid}&origin=web&grant={token}");
    let request =
        lambda_http::http::Request::builder().uri(uri).body(lambda_http::Body::Empty).unwrap();
    oauth_start::handle(service, request).await.status().as_u16()
}

/// A clock the rotation test moves.
#[derive(Debug)]
struct MovableClock(std::sync::Mutex<time::OffsetDateTime>);

impl ms_oauth::clock::Clock for MovableClock {
    fn now(&self) -> time::OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

#[tokio::test]
async fn links_signed_just_before_or_after_a_rotation_of_the_start_link_key_keep_working() {
    use std::sync::Arc;

    use ms_oauth::config::{self, Config};
    use ms_oauth::microsoft::Endpoints;
    use ms_oauth::store::MemoryStore;
    use oauth_start::StartService;

    let old_key = format!("old-{}", ms_oauth_tests::random_base32(40));
    let new_key = format!("new-{}", ms_oauth_tests::random_base32(40));
    let (arn, client) = secret(&old_key).await;
    let vars = [
        (config::WEBHOOK_ADDRESS, "api.example.com"),
        (config::MICROSOFT_CLIENT_ID, "11111111-2222-3333-4444-555555555555"),
        (config::OAUTH_TABLE_NAME, "t"),
    ];
    let config =
        Config::from_lookup(&|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()))
            .unwrap();
    let clock = Arc::new(MovableClock(std::sync::Mutex::new(time::OffsetDateTime::now_utc())));
    let ttl = Duration::from_secs(2);
    let service = |clock: Arc<MovableClock>| {
        StartService::new(
            config.clone(),
            Endpoints::new(&config),
            Arc::new(MemoryStore::default()),
            clock,
            CachedSecret::with_ttl(
                SecretSource::SecretsManager { arn: arn.clone() },
                Some(client.clone()),
                ttl,
            ),
        )
    };
    // An instance reads the key; then the key is rotated and the platform signs with the
    // new one while the instance still holds the old one.
    let warm = service(clock.clone());
    assert_eq!(open(&warm, &old_key, &clock).await, 200);
    client.put_secret_value().secret_id(&arn).secret_string(&new_key).send().await.unwrap();
    tokio::time::sleep(ttl / 5).await;
    assert_eq!(open(&warm, &new_key, &clock).await, 200, "a key rotated in is read again");

    // A new instance holds the new key; a link minted with the old one just before the
    // rotation still opens.
    let fresh = service(clock.clone());
    assert_eq!(open(&fresh, &new_key, &clock).await, 200);
    assert_eq!(open(&fresh, &old_key, &clock).await, 200, "the previous key, just after rotating");

    // Once every link of the old key has expired, the old key is refused.
    *clock.0.lock().unwrap() += time::Duration::minutes(11);
    let later = service(clock.clone());
    assert_eq!(open(&later, &new_key, &clock).await, 200);
    assert_eq!(open(&later, &old_key, &clock).await, 403, "the previous key, long after");
    // A key that never was one is refused throughout.
    let forged = format!("forged-{}", ms_oauth_tests::random_base32(40));
    assert_eq!(open(&later, &forged, &clock).await, 403);
}
