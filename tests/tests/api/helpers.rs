//! Spawns the whole product for one test: moto (shared), a fresh deployment of the template
//! (tables, keys, secrets), the stand-in identity platform and the four functions, each
//! built through the one wiring from the environment the resolved template gives it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use ms_oauth::audit::RecordedAudit;
use ms_oauth::clock::Clock;
use ms_oauth::config;
use ms_oauth::crypto::{DataKeys, KeyShares, KmsDataKeys, context_of, open_shared};
use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::events::RecordedEvents;
use ms_oauth::grant::{DEFAULT_GRANT_LIFETIME_SECS, StartGrant};
use ms_oauth::metrics::RecordedMetrics;
use ms_oauth::store::{DynamoKeyShares, DynamoStore, Store, StoredConnection};
use ms_oauth::tokens::TokenService;
use ms_oauth::wiring::{AwsService, Overrides};
use ms_oauth_tests::autokitteh::AkStandin;
use ms_oauth_tests::local::{self, Functions};
use ms_oauth_tests::recorder::Recorder;
use ms_oauth_tests::standin::{Registration, Standin};
use ms_oauth_tests::{aws, deploy, startlink};
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use token_refresher::Refresher;
use tokio::net::TcpListener;

pub const CLIENT_ID: &str = "3f2b7c8e-1d4a-4b6f-9e0c-5a7d8b9c0e1f";

/// Logs of every test in this binary; each test's secrets are unique, so checking the
/// whole buffer for one test's secrets is sound even with tests running in parallel.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = CaptureWriter(buffer.clone());
        // The functions' own subscriber at its most verbose: our crates at TRACE, libraries
        // capped. Every "no secret in the logs" check below therefore holds at TRACE.
        let _ = ms_oauth::runtime::try_init_tracing(
            tracing_subscriber::filter::LevelFilter::TRACE,
            false,
            move || writer.clone(),
        );
        buffer
    });
}

/// Everything logged so far by this test binary.
pub fn captured_logs() -> String {
    LOGS.get()
        .and_then(|b| b.lock().ok().map(|b| String::from_utf8_lossy(&b).into_owned()))
        .unwrap_or_default()
}

/// A clock tests can move forward.
#[derive(Debug)]
pub struct TestClock(Mutex<OffsetDateTime>);

impl TestClock {
    pub fn advance(&self, d: Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t += d;
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        self.0.lock().map(|t| *t).unwrap_or_else(|_| OffsetDateTime::now_utc())
    }
}

/// How to set up the app under test.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub tenant: Option<String>,
    pub http_timeout: Duration,
    /// Point one AWS service at a dead endpoint.
    pub dead_dynamodb: bool,
    /// Point DynamoDB at an endpoint that accepts connections and never answers.
    pub stalled_dynamodb: bool,
    /// `TOKEN_REFRESH_MARGIN_SECONDS`, when not the default.
    pub refresh_margin_secs: Option<u64>,
    /// `AUTOKITTEH_DASHBOARD_URL`.
    pub dashboard_url: Option<String>,
    pub dead_kms: bool,
    /// Secrets Manager unreachable for the functions that read the client secret (the start
    /// function is an instance that read its start-link key before the outage).
    pub dead_secrets_manager: bool,
    /// Inside an AutoKitteh deployment: a stand-in AutoKitteh behind a front door on the
    /// public address, which sends only the OAuth paths to the functions.
    pub autokitteh: bool,
    /// With `autokitteh`: the connection API and the refresher write back to AutoKitteh as
    /// a service user (`TestApp::ak_service_user`) whose API token is in Secrets Manager.
    pub ak_write_back: bool,
    /// Every function is built from the environment the template gives it; with this, each
    /// also reaches AWS through a recorder of its own and writes to the real sinks (events,
    /// audit bus), for the policy tests (see [`TestApp::deployed`]).
    pub from_template: bool,
    /// The server-wide app authenticates with the functions' AWS identity (an STS stand-in,
    /// `TestApp::sts`), trusted by a federated identity credential; Microsoft knows no
    /// secret of the deployment.
    pub aws_federation: bool,
    /// SAM parameters of the deployment beyond the test's own (for example
    /// `MicrosoftScopes`).
    pub parameters: Vec<(&'static str, String)>,
    /// Graph on another host than the identity platform, as in a national cloud: the
    /// stand-in by the name `localhost`, knowing only that host's `.default` scope.
    pub national_cloud_graph: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            tenant: None,
            http_timeout: Duration::from_secs(2),
            dead_dynamodb: false,
            stalled_dynamodb: false,
            refresh_margin_secs: None,
            dashboard_url: None,
            dead_kms: false,
            dead_secrets_manager: false,
            autokitteh: false,
            ak_write_back: false,
            from_template: false,
            aws_federation: false,
            parameters: Vec::new(),
            national_cloud_graph: false,
        }
    }
}

/// The product under test.
pub struct TestApp {
    pub address: String,
    /// Where the functions themselves listen (the connection API's address; inside
    /// AutoKitteh the public address is the front door's, which serves only sign-ins).
    pub api_address: String,
    pub standin: Standin,
    pub clock: Arc<TestClock>,
    pub table: String,
    /// The key-share table beside `table`.
    pub shares_table: String,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub kms: aws_sdk_kms::Client,
    pub secretsmanager: aws_sdk_secretsmanager::Client,
    pub client_secret: String,
    pub client_secret_arn: String,
    pub start_key: String,
    pub events: Arc<RecordedEvents>,
    pub refresher: Refresher,
    /// The stand-in AutoKitteh (with `AppOptions::autokitteh`).
    pub autokitteh: Option<AkStandin>,
    /// The service user writing back to AutoKitteh, and its API token (with
    /// `AppOptions::ak_write_back`); it belongs to no org until a test adds it.
    pub ak_service_user: Option<(String, String)>,
    /// With `AppOptions::from_template`: the deployment and each function's recorded calls.
    pub deployed: Option<Deployed>,
    /// The token key's id and the AWS emulator's address (for tools run against the app).
    pub kms_key: String,
    pub aws_endpoint: String,
    /// What the functions recorded as metrics (not with `AppOptions::from_template`).
    pub metrics: Arc<RecordedMetrics>,
    /// What the functions put on the audit trail (not with `AppOptions::from_template`).
    pub audit: Arc<RecordedAudit>,
    /// The STS stand-in (with `AppOptions::aws_federation`).
    pub sts: Option<ms_oauth_tests::sts::StsStandin>,
    /// Each function's environment, as the resolved template gives it.
    pub environments: BTreeMap<String, BTreeMap<String, String>>,
    /// The AWS SDK configuration the functions were built with, and the seams changed.
    sdk: aws_config::SdkConfig,
    overrides: Overrides,
}

/// A test deployment of the template: the functions' set-up and the AWS calls each made.
pub struct Deployed {
    pub deployment: ms_oauth_tests::iam::Deployment,
    /// By the template's logical id of the function.
    pub functions: BTreeMap<String, (ms_oauth_tests::iam::FunctionSetUp, Recorder)>,
}

/// The role the functions run as with `AppOptions::aws_federation` (the subject of their
/// tokens).
pub const FEDERATED_ROLE: &str = "arn:aws:iam::000000000000:role/oauth-test-functions";

/// A fresh AutoKitteh connection id.
pub fn new_cid() -> ConnectionId {
    ms_oauth_tests::new_connection_id()
}

const DEAD_ENDPOINT: &str = "http://127.0.0.1:9";

/// An endpoint that accepts every connection, reads what is sent and never answers: a
/// stalled dependency.
async fn stalled_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind stalled endpoint");
    let address = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    address
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    init_logs();
    let endpoint = aws::shared_endpoint().expect("AWS emulator");
    let sdk = aws::sdk_config(&endpoint).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let kms = aws_sdk_kms::Client::new(&sdk);
    let secretsmanager = aws_sdk_secretsmanager::Client::new(&sdk);

    let suffix = ms_oauth_tests::random_base32(10);
    let start_key = ms_oauth_tests::random_base32(40);
    let resources = deploy::Resources::make(&sdk, &format!("oauth-test-{suffix}"), &start_key)
        .await
        .expect("the deployment's resources");
    let client_secret = format!("cs~{}", ms_oauth_tests::random_base32(32));
    let client_secret_arn = aws::ensure_secret(
        &secretsmanager,
        &format!("oauth-test/{suffix}/client-secret"),
        &client_secret,
    )
    .await
    .expect("secret");

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let functions_address = format!("http://{}", listener.local_addr().expect("addr"));
    // Inside AutoKitteh the public address is the front door's.
    let (address, autokitteh) = if options.autokitteh {
        let ak = AkStandin::spawn(TcpListener::bind("127.0.0.1:0").await.expect("bind ak"))
            .expect("AutoKitteh stand-in");
        let door = TcpListener::bind("127.0.0.1:0").await.expect("bind front door");
        let address = format!("http://{}", door.local_addr().expect("addr"));
        tokio::spawn(ms_oauth_tests::frontdoor::serve(door, functions_address.clone(), ak.url()));
        (address, Some(ak))
    } else {
        (functions_address.clone(), None)
    };
    let standin = Standin::spawn(
        TcpListener::bind("127.0.0.1:0").await.expect("bind stand-in"),
        Registration {
            client_id: CLIENT_ID.into(),
            client_secret: client_secret.clone(),
            redirect_uri: format!("{address}{}", config::REDIRECT_PATH),
        },
    )
    .expect("stand-in");
    let sts = if options.aws_federation {
        let sts = ms_oauth_tests::sts::StsStandin::spawn(
            TcpListener::bind("127.0.0.1:0").await.expect("bind STS stand-in"),
        )
        .expect("STS stand-in");
        // The functions' AWS credentials (the access key `testing`) are this role.
        sts.add_role("testing", FEDERATED_ROLE);
        standin.add_federated_credential(ms_oauth_tests::standin::FederatedCredential {
            issuer: sts.issuer(),
            subject: FEDERATED_ROLE.into(),
            audience: ms_oauth::federation::ENTRA_AUDIENCE.into(),
        });
        // No secret of the deployment works at Microsoft.
        standin.rotate_secret(&format!("never-stored~{}", ms_oauth_tests::random_base32(20)));
        Some(sts)
    } else {
        None
    };

    // The deployment: the template with this test's parameters.
    let mut parameters = BTreeMap::from([
        ("MicrosoftClientId".to_owned(), CLIENT_ID.to_owned()),
        ("MicrosoftClientSecretArn".to_owned(), client_secret_arn.clone()),
        ("MicrosoftAuthorityHost".to_owned(), standin.url()),
        ("MicrosoftGraphUrl".to_owned(), standin.url()),
    ]);
    if options.national_cloud_graph {
        let graph = format!("http://localhost:{}", standin.addr.port());
        standin.set_graph_resource(&graph);
        parameters.insert("MicrosoftGraphUrl".into(), graph);
    }
    if options.aws_federation {
        parameters.insert("MicrosoftClientAuth".into(), "aws_federation".into());
        parameters.insert("MicrosoftClientSecretArn".into(), String::new());
    }
    if let Some(tenant) = &options.tenant {
        parameters.insert("MicrosoftTenantId".into(), tenant.clone());
    }
    if let Some(margin) = options.refresh_margin_secs {
        parameters.insert("TokenRefreshMarginSeconds".into(), margin.to_string());
    }
    if let Some(dashboard) = &options.dashboard_url {
        parameters.insert("AutoKittehDashboardUrl".into(), dashboard.clone());
    }
    let mut ak_service_user = None;
    if let Some(ak) = &autokitteh {
        parameters.insert("AutoKittehApiUrl".into(), ak.url());
        parameters.insert("AutoKittehUiUrl".into(), address.clone());
        if options.ak_write_back {
            let user = ak.add_user("automation@service.contoso.example", &[]);
            let token = ak.session_for(&user);
            let arn = aws::ensure_secret(
                &secretsmanager,
                &format!("oauth-test/{suffix}/autokitteh-api-token"),
                &token,
            )
            .await
            .expect("API token secret");
            parameters.insert("AutoKittehApiTokenArn".into(), arn);
            ak_service_user = Some((user, token));
        }
    }
    for (name, value) in &options.parameters {
        parameters.insert((*name).to_owned(), value.clone());
    }
    let deployment = deploy::deployment("oauth-test", parameters, &resources);

    // Each function reaches AWS as the template lets it: through a recorder of its own with
    // `from_template` (the policy tests), else straight to the emulator.
    let mut functions = BTreeMap::new();
    let mut sdks = BTreeMap::new();
    for id in deploy::FUNCTIONS {
        let set_up = deploy::function(&deployment, id, &address);
        let recorder = if options.from_template {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind recorder");
            let sts_upstream = sts.as_ref().map(|s| s.url());
            let recorder = Recorder::spawn_routed(listener, &endpoint, sts_upstream.as_deref())
                .expect("recorder");
            sdks.insert(id, aws::sdk_config(recorder.url()).await);
            Some(recorder)
        } else {
            sdks.insert(id, sdk.clone());
            None
        };
        functions.insert(id.to_owned(), (set_up, recorder));
    }

    // The seams a test may change: the clock, the sinks, timeouts and dead dependencies.
    let clock = Arc::new(TestClock(Mutex::new(OffsetDateTime::now_utc())));
    let recorded = Arc::new(RecordedMetrics::default());
    let recorded_audit = Arc::new(RecordedAudit::default());
    let events = Arc::new(RecordedEvents::default());
    let mut endpoints = Vec::new();
    if options.dead_dynamodb {
        endpoints.push((AwsService::DynamoDb, DEAD_ENDPOINT.to_owned()));
    }
    if options.stalled_dynamodb {
        endpoints.push((AwsService::DynamoDb, stalled_endpoint().await));
    }
    if options.dead_kms {
        endpoints.push((AwsService::Kms, DEAD_ENDPOINT.to_owned()));
    }

    if let (Some(sts), false) = (&sts, options.from_template) {
        endpoints.push((AwsService::Sts, sts.url()));
    }
    let mut overrides = Overrides {
        clock: Some(clock.clone()),
        endpoints,
        http_timeout: Some(options.http_timeout),
        retry_backoff: Some(Duration::from_millis(20)),
        ..Overrides::default()
    };
    // The policy tests see every AWS call the template's sinks make; the others record them.
    if !options.from_template {
        overrides.metrics = Some(recorded.clone());
        overrides.audit = Some(recorded_audit.clone());
        overrides.events = Some(events.clone());
    }
    // Secrets Manager down for the functions that read the client secret; the start
    // function's instance holds its start-link key from before.
    let overrides_of = |id: &str| {
        let mut overrides = overrides.clone();
        if options.dead_secrets_manager && id != "StartFunction" {
            overrides.endpoints.push((AwsService::SecretsManager, DEAD_ENDPOINT.to_owned()));
        }
        overrides
    };
    let built = deploy::build(&|id| &functions[id].0.environment, &|id| &sdks[id], &overrides_of)
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(local::serve(
        listener,
        Functions {
            start: Arc::new(built.start),
            redirect: Arc::new(built.redirect),
            api: Arc::new(built.api),
        },
    ));
    let environments = functions
        .iter()
        .map(|(id, (set_up, _))| (id.clone(), set_up.environment.clone()))
        .collect();
    let deployed = options.from_template.then(|| Deployed {
        deployment,
        functions: functions
            .into_iter()
            .map(|(id, (set_up, recorder))| (id, (set_up, recorder.expect("a recorder"))))
            .collect(),
    });

    TestApp {
        address,
        api_address: functions_address,
        standin,
        clock,
        table: resources.table,
        shares_table: resources.shares_table,
        dynamodb,
        kms,
        secretsmanager,
        client_secret,
        client_secret_arn,
        start_key,
        events,
        refresher: built.refresher,
        autokitteh,
        ak_service_user,
        deployed,
        kms_key: resources.kms_key,
        aws_endpoint: endpoint,
        metrics: recorded,
        audit: recorded_audit,
        sts,
        environments,
        sdk,
        overrides,
    }
}

impl TestApp {
    /// Another instance of a function that serves tokens (`ConnectionApiFunction` or
    /// `TokenRefresherFunction`), built like the first through the one wiring from its
    /// environment with `changed` variables (another table, say), and `secret_ttl` for the
    /// client secret's cache when given.
    pub fn token_service(
        &self,
        function: &str,
        changed: &[(&str, &str)],
        secret_ttl: Option<Duration>,
    ) -> TokenService {
        let mut env = self.environment(function);
        for (name, value) in changed {
            env.insert((*name).to_owned(), (*value).to_owned());
        }
        let overrides = Overrides { secret_ttl, ..self.overrides.clone() };
        deploy::wire((&env, &self.sdk, &overrides), function, TokenService::wire)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The environment the template gives `function` in this deployment.
    pub fn environment(&self, function: &str) -> BTreeMap<String, String> {
        self.environments[function].clone()
    }
}

/// A response as a browser sees it.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: u16,
    pub url: String,
    pub location: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// A cookie as the browser keeps it.
#[derive(Debug, Clone)]
struct StoredCookie {
    value: String,
    /// `host:port` that set it; `None` for cookies a test put in the jar (sent everywhere).
    host: Option<String>,
    path: String,
}

/// A minimal browser: follows nothing by itself; keeps cookies per host and path, sending
/// each only where a browser would (host-only cookies, `Path` prefix).
#[derive(Debug, Clone)]
pub struct Browser {
    http: reqwest::Client,
    jar: Arc<Mutex<HashMap<String, StoredCookie>>>,
    /// The `Sec-Fetch-Site` its navigations carry, as a browser sends it: `same-site` for one
    /// navigating from AutoKitteh's own pages; none for a client that does not say.
    fetch_site: Option<&'static str>,
}

fn host_of(url: &url::Url) -> String {
    format!("{}:{}", url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(0))
}

impl Browser {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Self { http, jar: Arc::default(), fetch_site: None }
    }

    /// A browser whose navigations say they come from `site` (`same-site`: AutoKitteh's UI
    /// opened them; `none`: a link from mail or chat; `cross-site`: another site's page).
    pub fn navigating_from(mut self, site: &'static str) -> Self {
        self.fetch_site = Some(site);
        self
    }

    /// A browser holding exactly `cookies`.
    pub fn with_cookies(cookies: HashMap<String, String>) -> Self {
        let browser = Self::new();
        *browser.jar.lock().expect("jar") = cookies
            .into_iter()
            .map(|(k, value)| (k, StoredCookie { value, host: None, path: "/".into() }))
            .collect();
        browser
    }

    /// A GET with a hand-made `Cookie` header and no jar.
    pub async fn get_with_cookie(&self, url: &str, cookie: &str) -> Page {
        let response = self
            .http
            .get(url)
            .header(reqwest::header::COOKIE, cookie)
            .send()
            .await
            .expect("request");
        self.read(url, response).await
    }

    /// Name and value of every cookie held.
    pub fn cookies(&self) -> HashMap<String, String> {
        self.jar.lock().expect("jar").iter().map(|(k, c)| (k.clone(), c.value.clone())).collect()
    }

    /// Removes one cookie (as a user clearing it would).
    pub fn forget(&self, name: &str) {
        self.jar.lock().expect("jar").remove(name);
    }

    fn cookie_header(&self, url: &str) -> String {
        let Ok(url) = url::Url::parse(url) else { return String::new() };
        let host = host_of(&url);
        self.jar
            .lock()
            .expect("jar")
            .iter()
            .filter(|(_, c)| c.host.as_ref().is_none_or(|h| *h == host))
            .filter(|(_, c)| url.path().starts_with(&c.path))
            .map(|(k, c)| format!("{k}={}", c.value))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn get(&self, url: &str) -> Page {
        let mut request = self.http.get(url);
        if let Some(site) = self.fetch_site {
            request = request.header("sec-fetch-site", site);
        }
        let cookie_header = self.cookie_header(url);
        if !cookie_header.is_empty() {
            request = request.header(reqwest::header::COOKIE, cookie_header);
        }
        let response = request.send().await.expect("request");
        self.read(url, response).await
    }

    pub async fn post_form(&self, url: &str, form: &[(String, String)]) -> Page {
        self.post_form_with(url, form, &[]).await
    }

    /// A form post with extra request headers (what a browser adds: `Origin`,
    /// `Sec-Fetch-Site`).
    pub async fn post_form_with(
        &self,
        url: &str,
        form: &[(String, String)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut request = self.http.post(url).form(form);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let cookie_header = self.cookie_header(url);
        if !cookie_header.is_empty() {
            request = request.header(reqwest::header::COOKIE, cookie_header);
        }
        let response = request.send().await.expect("request");
        self.read(url, response).await
    }

    pub async fn request(&self, method: reqwest::Method, url: &str) -> Page {
        let response = self.http.request(method, url).send().await.expect("request");
        self.read(url, response).await
    }

    async fn read(&self, url: &str, response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let host = url::Url::parse(url).ok().map(|u| host_of(&u));
        for set in headers.get_all(reqwest::header::SET_COOKIE) {
            let set = set.to_str().expect("cookie header");
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').expect("cookie pair");
            let expired = attributes.to_ascii_lowercase().contains("max-age=0");
            let path = attributes
                .split(';')
                .filter_map(|a| a.trim().split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case("path"))
                .map_or_else(|| "/".to_owned(), |(_, v)| v.to_owned());
            let mut jar = self.jar.lock().expect("jar");
            if expired || value.is_empty() {
                jar.remove(name.trim());
            } else {
                let cookie =
                    StoredCookie { value: value.trim().to_owned(), host: host.clone(), path };
                jar.insert(name.trim().to_owned(), cookie);
            }
        }
        let location = headers
            .get(reqwest::header::LOCATION)
            .map(|l| l.to_str().expect("location").to_owned());
        let body = response.text().await.expect("body");
        Page { status, url: url.to_owned(), location, headers, body }
    }
}

/// The steps of one flow, for assertions.
#[derive(Debug)]
pub struct Flow {
    pub authorize_url: String,
    pub finish: Page,
}

impl TestApp {
    /// A start link signed the way the platform signs it (default user and lifetime).
    pub fn start_link(&self, cid: &ConnectionId, origin: Origin) -> String {
        self.start_link_for(&startlink::grant(cid, origin, DEFAULT_GRANT_LIFETIME_SECS))
    }

    /// A start link for exactly `grant`.
    pub fn start_link_for(&self, grant: &StartGrant) -> String {
        startlink::start_link(
            &self.address,
            &self.start_key,
            grant,
            self.clock.now().unix_timestamp(),
        )
        .expect("start link")
    }

    /// Opens a start link and, when it shows the confirmation, presses its button; returns
    /// the last answer (a 302 to Microsoft when all went well, else the page that refused).
    pub async fn start(&self, browser: &Browser, link: &str) -> Page {
        let page = browser.get(link).await;
        if page.status != 200 {
            return page;
        }
        self.confirm(browser, &page).await
    }

    /// Presses the confirm button of a confirmation `page`, from that page (same origin).
    pub async fn confirm(&self, browser: &Browser, page: &Page) -> Page {
        let fields = startlink::confirm_fields(&page.body);
        assert!(!fields.is_empty(), "a confirm form: {}", page.body);
        let url = url::Url::parse(&page.url).expect("page url");
        let origin = url.origin().ascii_serialization();
        let action = page
            .body
            .split(r#"<form method="post" action=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the form's action");
        let post = format!("{origin}{action}");
        browser
            .post_form_with(
                &post,
                &fields,
                &[("origin", &origin), ("sec-fetch-site", "same-origin")],
            )
            .await
    }

    /// Answers the stand-in's consent page with `choice` (`work`, `personal` or `cancel`)
    /// and returns where it sends the browser.
    pub async fn consent(&self, browser: &Browser, authorize_url: &str, choice: &str) -> String {
        let page = browser.get(authorize_url).await;
        assert_eq!(page.status, 200, "consent page: {}", page.body);
        let url = url::Url::parse(authorize_url).expect("authorize url");
        let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        form.push(("account".into(), choice.into()));
        let post_url = format!("{}{}", url.origin().ascii_serialization(), url.path());
        let decision = browser.post_form(&post_url, &form).await;
        assert_eq!(decision.status, 303, "consent decision: {}", decision.body);
        decision.location.expect("callback location")
    }

    /// Runs a whole flow in `browser` for `cid`, choosing `choice` at the consent page.
    pub async fn connect(
        &self,
        browser: &Browser,
        cid: &ConnectionId,
        origin: Origin,
        choice: &str,
    ) -> Flow {
        let start = self.start(browser, &self.start_link(cid, origin)).await;
        assert_eq!(start.status, 302, "start: {}", start.body);
        let authorize_url = start.location.clone().expect("authorize location");
        let callback_url = self.consent(browser, &authorize_url, choice).await;
        let finish = browser.get(&callback_url).await;
        Flow { authorize_url, finish }
    }

    /// A callback for `state` from a browser holding a cookie of the right name (but no
    /// pending sign-in behind it).
    pub async fn callback_for_unknown_state(&self, state: &str) -> Page {
        let key = ms_oauth::state::StateKey::from_state(state);
        let url = format!("{}{}?code=abc&state={state}", self.address, config::REDIRECT_PATH);
        Browser::new().get_with_cookie(&url, &format!("{}=nonce", key.cookie_name())).await
    }

    /// The stored connection, if any.
    pub async fn connection(&self, cid: &ConnectionId) -> Option<StoredConnection> {
        DynamoStore::new(self.dynamodb.clone(), self.table.clone())
            .get_connection(cid)
            .await
            .expect("get connection")
    }

    /// The decrypted secret vars of a stored connection.
    pub async fn secret_vars(&self, stored: &StoredConnection) -> serde_json::Value {
        let plaintext = self.open_secrets(stored).await.expect("open");
        serde_json::from_slice(plaintext.expose_secret()).expect("json")
    }

    /// Opens a stored connection's sealed secrets the way the functions do (KMS and the
    /// key-share table).
    pub async fn open_secrets(
        &self,
        stored: &StoredConnection,
    ) -> Result<secrecy::SecretSlice<u8>, ms_oauth::crypto::CryptoError> {
        let keys = KmsDataKeys::new(self.kms.clone(), "unused-for-decrypt");
        let c = &stored.connection;
        let cid = c.connection_id.as_str();
        let context = context_of(&c.secrets, &self.table, cid);
        let shares = self.key_shares();
        open_shared(&keys as &dyn DataKeys, &shares as &dyn KeyShares, cid, &context, &c.secrets)
            .await
    }

    /// The key-share table, as the functions reach it.
    pub fn key_shares(&self) -> DynamoKeyShares {
        DynamoKeyShares::new(self.dynamodb.clone(), self.shares_table.clone())
    }

    /// The ids of the key shares held for `cid`.
    pub async fn share_ids(&self, cid: &ConnectionId) -> Vec<String> {
        let out = self
            .dynamodb
            .query()
            .table_name(&self.shares_table)
            .key_condition_expression("connection_id = :c")
            .expression_attribute_values(":c", AttributeValue::S(cid.to_string()))
            .consistent_read(true)
            .send()
            .await
            .expect("query shares");
        out.items
            .unwrap_or_default()
            .iter()
            .filter_map(|item| item.get("share_id").and_then(|v| v.as_s().ok()).cloned())
            .collect()
    }

    /// Every raw item in the table.
    pub async fn items(&self) -> Vec<HashMap<String, AttributeValue>> {
        self.dynamodb
            .scan()
            .table_name(&self.table)
            .send()
            .await
            .expect("scan")
            .items
            .unwrap_or_default()
    }

    /// Every raw item but the records of used start grants (which stay until their TTL).
    pub async fn flow_items(&self) -> Vec<HashMap<String, AttributeValue>> {
        let mut items = self.items().await;
        items.retain(|i| i.get("kind").and_then(|k| k.as_s().ok()).is_none_or(|k| k != "grant"));
        items
    }

    /// Number of pending flow states.
    pub async fn pending_states(&self) -> usize {
        self.items()
            .await
            .iter()
            .filter(|i| i.get("kind").and_then(|k| k.as_s().ok()).is_some_and(|k| k == "state"))
            .count()
    }

    /// Makes `cid` due for the refresher now.
    pub async fn make_due(&self, cid: &ConnectionId) {
        self.dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("conn#{cid}")))
            .update_expression("SET refresh_due_at = :past")
            .expression_attribute_values(":past", AttributeValue::N("1".into()))
            .send()
            .await
            .expect("make due");
    }

    /// Number of connection items.
    pub async fn connections(&self) -> usize {
        self.items()
            .await
            .iter()
            .filter(|i| {
                i.get("kind").and_then(|k| k.as_s().ok()).is_some_and(|k| k == "connection")
            })
            .count()
    }
}

/// Asserts a page's status and that its text mentions `words`.
#[track_caller]
pub fn assert_page(page: &Page, status: u16, words: &str) {
    assert_eq!(page.status, status, "{} → {}: {}", page.url, page.status, page.body);
    assert!(page.body.contains(words), "{} page lacks {words:?}: {}", page.url, page.body);
    assert_eq!(page.header("cache-control"), "no-store");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert!(page.header("content-security-policy").starts_with("default-src 'none'"));
}

/// Asserts a redirect to a URL starting with `prefix`.
#[track_caller]
pub fn assert_redirects_to(page: &Page, prefix: &str) {
    assert_eq!(page.status, 302, "{}: {}", page.url, page.body);
    let location = page.location.as_deref().unwrap_or("");
    assert!(location.starts_with(prefix), "redirected to {location}, expected {prefix}…");
}
