//! Load and fault runs through the local stack: complete sign-ins (start → consent at the
//! stand-in → redirect), many at once, then every connection checked against what the
//! stand-in issued for its own sign-in.
//!
//! With faults, the stand-in answers a share of token and Graph requests with 503 or
//! too late, and a [`ChaosProxy`] in front of the AWS emulator loses connections. The run
//! then reports how each failed sign-in ended, and the checks that must hold regardless:
//! every failure is a clear page, no connection is half-written or holds another sign-in's
//! tokens, and no authorization code reaches the token endpoint twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use ms_oauth::config;
use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::grant::GrantKey;
use ms_oauth::wiring::Overrides;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::chaos::{ChaosCounts, ChaosProxy};
use crate::local;
use crate::standin::{AccountKind, Fault, RandomFaults, Registration, Standin, accounts_for};
use crate::{aws, deploy};

const CLIENT_ID: &str = "7c1e4f0a-8b2d-4e6f-a1c3-5d7e9f0b2c4d";
const CLIENT_SECRET: &str = "load-run-client-secret~not-a-real-one";
const START_KEY: &str = "load-run-start-link-key-0123456789abcdef";
/// Tenant path of the app: both work and personal accounts can sign in.
const TENANT: &str = "common";
/// Pages that blame the browser or ask to retry a duplicate: never right for a sign-in done
/// once, in time, in one browser.
const MISLEADING: [&str; 5] = [
    "This sign-in link was already used",
    "Confirm in the browser that opened the link",
    "This sign-in is unknown or already finished",
    "Finish the sign-in in the browser where you started it",
    "The sign-in could not start",
];
/// How long the functions wait for Microsoft in these runs (production: 10 s), so a
/// simulated timeout costs seconds, not tens of seconds.
const MICROSOFT_TIMEOUT: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub flows: usize,
    pub concurrency: usize,
    pub faults: Option<Faults>,
}

/// Fault rates of a fault run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Faults {
    /// Share of token and Graph requests answered with 503 or after the client's timeout
    /// (half each).
    pub microsoft: f64,
    /// Share of new connections to the AWS endpoint closed before anything is forwarded.
    pub aws_refuse: f64,
    /// Share of AWS answers cut off after the request was applied.
    pub aws_cut: f64,
}

/// How one sign-in ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Connected,
    /// A page with a title and a "what to do" line.
    ErrorPage {
        step: &'static str,
        status: u16,
        title: String,
    },
    /// Anything else: no answer, an unexpected status or an unclear page.
    Broken {
        step: &'static str,
        detail: String,
    },
}

#[derive(Debug)]
struct FlowRecord {
    cid: ConnectionId,
    account: AccountKind,
    /// The `state` the start function sent to the stand-in.
    state: Option<String>,
    start: Option<Duration>,
    authorize: Option<Duration>,
    redirect: Option<Duration>,
    total: Option<Duration>,
    outcome: Outcome,
}

/// Latency percentiles of one step, over the requests that got an answer.
#[derive(Debug, Clone, Serialize)]
pub struct StepLatency {
    pub step: &'static str,
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Everything a run measured and checked.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub flows: usize,
    pub concurrency: usize,
    pub faults: Option<Faults>,
    pub wall_seconds: f64,
    pub flows_per_second: f64,
    pub connected: usize,
    pub steps: Vec<StepLatency>,
    /// Failed sign-ins by step, status and page title.
    pub error_pages: BTreeMap<String, usize>,
    /// Sign-ins that did not end on a clear page (must be empty).
    pub broken: Vec<String>,
    /// Sign-ins that showed "connected" but whose connection is missing (must be 0).
    pub lost: usize,
    /// Connections holding tokens or identity of another sign-in (must be 0).
    pub mixed: usize,
    /// Connections that exist but cannot serve a token or lack their vars (must be 0).
    pub half_written: usize,
    /// Failed sign-ins whose connection was nevertheless saved complete (the save was
    /// applied, its answer lost on every attempt).
    pub saved_after_error_page: usize,
    /// Codes presented to the token endpoint more than once (must be 0).
    pub codes_presented_twice: usize,
    /// Failed sign-ins told their link was used or could not start, though every browser
    /// did everything once and in time: the mark of an unsafe retry (must be 0).
    pub misleading_pages: usize,
    pub token_requests: usize,
    pub microsoft_faults_injected: usize,
    pub aws: ChaosCounts,
}

impl LoadReport {
    /// The invariants that hold under any fault plan; the reasons when one does not.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.broken.is_empty() {
            out.push(format!(
                "{} sign-ins without a clear page: {:?}",
                self.broken.len(),
                self.broken
            ));
        }
        for (what, n) in [
            ("connected but lost", self.lost),
            ("mixed tokens or identity", self.mixed),
            ("half-written connections", self.half_written),
            ("codes presented twice", self.codes_presented_twice),
            ("misleading error pages", self.misleading_pages),
        ] {
            if n > 0 {
                out.push(format!("{n} {what}"));
            }
        }
        out
    }
}

/// The product behind one local address, on its own table, key and secrets.
#[derive(Debug)]
pub struct LoadStack {
    pub address: String,
    pub standin: Standin,
    pub proxy: ChaosProxy,
    http: reqwest::Client,
    start_key: GrantKey,
    /// The client secret in Secrets Manager (for rotation tests), and a client for it.
    pub client_secret_arn: String,
    pub secretsmanager: aws_sdk_secretsmanager::Client,
}

impl LoadStack {
    /// Starts the stack against the AWS emulator at `moto` (through a chaos proxy that is
    /// transparent until faults are set).
    pub async fn start(moto: &str) -> Result<Self, String> {
        Self::start_with_secret_ttl(moto, ms_oauth::secrets::SECRET_CACHE_TTL).await
    }

    /// The same with the client secret cached for `secret_ttl` (rotation tests).
    pub async fn start_with_secret_ttl(moto: &str, secret_ttl: Duration) -> Result<Self, String> {
        let name = format!("load-{}", crate::random_base32(10));
        let setup = aws::sdk_config(moto).await;
        let resources = deploy::Resources::make(&setup, &name, START_KEY).await?;
        let secret_arn = aws::ensure_secret(
            &aws_sdk_secretsmanager::Client::new(&setup),
            &format!("{name}/client-secret"),
            CLIENT_SECRET,
        )
        .await?;

        let upstream: std::net::SocketAddr = url::Url::parse(moto)
            .ok()
            .and_then(|u| u.socket_addrs(|| None).ok())
            .and_then(|a| a.into_iter().next())
            .ok_or_else(|| format!("cannot resolve {moto}"))?;
        let proxy = ChaosProxy::spawn(bind().await?, upstream).map_err(|e| e.to_string())?;
        let sdk = aws::sdk_config(&proxy.url()).await;

        let app = bind().await?;
        let address = format!("http://{}", app.local_addr().map_err(|e| e.to_string())?);
        let standin = Standin::spawn(
            bind().await?,
            Registration {
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                redirect_uri: format!("{address}{}", config::REDIRECT_PATH),
            },
        )
        .map_err(|e| e.to_string())?;
        // The template deployed with the stand-in as identity platform, every function built
        // from the environment it gives that function.
        let parameters = BTreeMap::from([
            ("MicrosoftClientId".to_owned(), CLIENT_ID.to_owned()),
            ("MicrosoftClientSecretArn".to_owned(), secret_arn.clone()),
            ("MicrosoftTenantId".to_owned(), TENANT.to_owned()),
            ("MicrosoftAuthorityHost".to_owned(), standin.url()),
            ("MicrosoftGraphUrl".to_owned(), standin.url()),
        ]);
        let deployment = deploy::deployment(&name, parameters, &resources);
        let environments = deploy::environments(&deployment, &address);
        let overrides = Overrides {
            http_timeout: Some(MICROSOFT_TIMEOUT),
            secret_ttl: Some(secret_ttl),
            ..Overrides::default()
        };
        let built = deploy::build(&|id| &environments[id], &|_| &sdk, &|_| overrides.clone())?;
        tokio::spawn(local::serve(app, built.served().0));

        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        let start_key = GrantKey::new(START_KEY.to_owned().into()).map_err(|e| e.to_string())?;
        let secretsmanager = aws_sdk_secretsmanager::Client::new(&setup);
        Ok(Self {
            address,
            standin,
            proxy,
            http,
            start_key,
            client_secret_arn: secret_arn,
            secretsmanager,
        })
    }

    /// Runs `options.flows` sign-ins, `options.concurrency` at a time, then checks every
    /// connection with faults off.
    pub async fn run(&self, options: &LoadOptions) -> Result<LoadReport, String> {
        let before = self.standin.calls();
        let aws_before = self.proxy.counts();
        self.set_faults(options.faults);
        let began = Instant::now();
        let records: Vec<FlowRecord> = futures::stream::iter(0..options.flows)
            .map(|i| self.flow(i))
            .buffer_unordered(options.concurrency.max(1))
            .collect()
            .await;
        let wall = began.elapsed();
        self.set_faults(None);
        let after = self.standin.calls();
        let aws_after = self.proxy.counts();

        let mut report = LoadReport {
            flows: options.flows,
            concurrency: options.concurrency,
            faults: options.faults,
            wall_seconds: wall.as_secs_f64(),
            flows_per_second: options.flows as f64 / wall.as_secs_f64().max(1e-9),
            connected: records.iter().filter(|r| r.outcome == Outcome::Connected).count(),
            steps: vec![
                latency("start", records.iter().filter_map(|r| r.start)),
                latency("consent (stand-in)", records.iter().filter_map(|r| r.authorize)),
                latency("redirect", records.iter().filter_map(|r| r.redirect)),
                latency("whole sign-in", records.iter().filter_map(|r| r.total)),
            ],
            error_pages: BTreeMap::new(),
            broken: Vec::new(),
            lost: 0,
            mixed: 0,
            half_written: 0,
            saved_after_error_page: 0,
            misleading_pages: records
                .iter()
                .filter(|r| {
                    matches!(&r.outcome, Outcome::ErrorPage { title, .. } if MISLEADING.contains(&title.as_str()))
                })
                .count(),
            codes_presented_twice: after
                .code_presentations
                .iter()
                .filter(|(code, n)| **n > 1 && !before.code_presentations.contains_key(*code))
                .count(),
            token_requests: after.token_requests - before.token_requests,
            microsoft_faults_injected: after.random_faults - before.random_faults,
            aws: ChaosCounts {
                connections: aws_after.connections - aws_before.connections,
                refused: aws_after.refused - aws_before.refused,
                cut: aws_after.cut - aws_before.cut,
            },
        };
        for record in &records {
            match &record.outcome {
                Outcome::Connected => {}
                Outcome::ErrorPage { step, status, title } => {
                    *report.error_pages.entry(format!("{step}: {status} {title}")).or_default() +=
                        1;
                }
                Outcome::Broken { step, detail } => {
                    report.broken.push(format!("{} at {step}: {detail}", record.cid));
                }
            }
            self.check(record, &mut report).await?;
        }
        Ok(report)
    }

    fn set_faults(&self, faults: Option<Faults>) {
        let faults = faults.unwrap_or(Faults { microsoft: 0.0, aws_refuse: 0.0, aws_cut: 0.0 });
        self.proxy.set(faults.aws_refuse, faults.aws_cut);
        self.standin.set_random_faults((faults.microsoft > 0.0).then(|| RandomFaults {
            fraction: faults.microsoft,
            faults: vec![
                Fault::Status(503),
                Fault::Delay(MICROSOFT_TIMEOUT + Duration::from_secs(1)),
            ],
        }));
    }

    /// One sign-in without faults; the connection it made.
    pub async fn connect_one(&self) -> Result<ConnectionId, String> {
        let record = self.flow(0).await;
        match record.outcome {
            Outcome::Connected => Ok(record.cid),
            other => Err(format!("{other:?}")),
        }
    }

    /// `GET /connections/{cid}/token[?force_refresh=true]` on the connection API: the status
    /// and the JSON answer.
    pub async fn token(
        &self,
        cid: &ConnectionId,
        force: bool,
    ) -> Result<(u16, serde_json::Value), String> {
        let query = if force { "?force_refresh=true" } else { "" };
        let url = format!("{}/connections/{cid}/token{query}", self.address);
        let response = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.json().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// `DELETE /connections/{cid}`: the status.
    pub async fn disconnect(&self, cid: &ConnectionId) -> Result<u16, String> {
        let url = format!("{}/connections/{cid}", self.address);
        let response = self.http.delete(url).send().await.map_err(|e| e.to_string())?;
        Ok(response.status().as_u16())
    }

    /// One sign-in as a browser does it; each step timed.
    async fn flow(&self, i: usize) -> FlowRecord {
        let account = if i.is_multiple_of(2) { AccountKind::Work } else { AccountKind::Personal };
        let cid = crate::new_connection_id();
        let mut record = FlowRecord {
            cid: cid.clone(),
            account,
            state: None,
            start: None,
            authorize: None,
            redirect: None,
            total: None,
            outcome: Outcome::Connected,
        };
        let began = Instant::now();
        record.outcome = match self.sign_in(&cid, account, &mut record).await {
            Ok(()) => {
                record.total = Some(began.elapsed());
                Outcome::Connected
            }
            Err(outcome) => outcome,
        };
        record
    }

    async fn sign_in(
        &self,
        cid: &ConnectionId,
        account: AccountKind,
        record: &mut FlowRecord,
    ) -> Result<(), Outcome> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let grant = crate::startlink::grant(cid, Origin::Web, 600);
        let token = self.start_key.sign(&grant, now).map_err(|e| broken("start", e.to_string()))?;
        let url =
            format!("{}{}?cid={cid}&origin=web&grant={token}", self.address, config::START_PATH);
        // The start link's page and its confirm button, as one step.
        let t = Instant::now();
        let start = crate::startlink::open_and_confirm(&self.http, &url)
            .await
            .map_err(|e| broken("start", e))?;
        record.start = Some(t.elapsed());
        if start.status() != 302 {
            return Err(page("start", start).await);
        }
        let header =
            |name: &str| start.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let cookie = crate::startlink::binding_cookie(start.headers())
            .ok_or_else(|| broken("start", "no binding cookie".into()))?;
        let authorize = header("location")
            .and_then(|l| url::Url::parse(&l).ok())
            .ok_or_else(|| broken("start", "no location".into()))?;
        let mut form: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
        record.state = form.iter().find(|(k, _)| k == "state").map(|(_, v)| v.clone());
        form.push(("account".into(), account.as_str().into()));
        let post = format!("{}{}", authorize.origin().ascii_serialization(), authorize.path());

        let t = Instant::now();
        let decision = self
            .http
            .post(post)
            .form(&form)
            .send()
            .await
            .map_err(|e| broken("consent", e.to_string()))?;
        record.authorize = Some(t.elapsed());
        let callback = decision
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| broken("consent", format!("HTTP {}", decision.status())))?;

        let t = Instant::now();
        let finish = self
            .http
            .get(&callback)
            .header("cookie", cookie)
            .send()
            .await
            .map_err(|e| broken("redirect", e.to_string()))?;
        record.redirect = Some(t.elapsed());
        if finish.status() != 200 {
            return Err(page("redirect", finish).await);
        }
        let body = finish.text().await.map_err(|e| broken("redirect", e.to_string()))?;
        if title(&body).as_deref() != Some("Microsoft account connected") {
            return Err(broken("redirect", "200 without the connected page".into()));
        }
        Ok(())
    }

    /// Checks one sign-in's connection through the connection API.
    async fn check(&self, record: &FlowRecord, report: &mut LoadReport) -> Result<(), String> {
        let get = |path: String| async move {
            let response = self
                .http
                .get(format!("{}/connections/{}{path}", self.address, record.cid))
                .send()
                .await
                .map_err(|e| format!("connection API: {e}"))?;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        let (status, connection) = get(String::new()).await?;
        let exists = status == 200 && connection["status"] != "init_required";
        let connected = record.outcome == Outcome::Connected;
        if !exists {
            if connected {
                report.lost += 1;
            }
            return Ok(());
        }
        if !connected {
            report.saved_after_error_page += 1;
        }
        let (token_status, token) = get("/token".into()).await?;
        let Some(access_token) = token["access_token"].as_str().filter(|_| token_status == 200)
        else {
            report.half_written += 1;
            return Ok(());
        };
        let expected = accounts_for(TENANT).into_iter().find(|a| a.kind == record.account);
        let upn = connection["vars"]["user_principal_name"].as_str();
        let issued_for = self.standin.account_for(access_token);
        let state = self.standin.state_for(access_token);
        if upn.is_none() || connection["vars"]["oauth_expiry"].is_null() {
            report.half_written += 1;
        } else if expected.as_ref().map(|a| a.upn.as_str()) != upn
            || issued_for.map(|a| a.kind) != Some(record.account)
            || state.is_none()
            || state != record.state
        {
            report.mixed += 1;
        }
        Ok(())
    }
}

async fn bind() -> Result<TcpListener, String> {
    TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())
}

fn broken(step: &'static str, detail: String) -> Outcome {
    Outcome::Broken { step, detail }
}

/// An error answer: a clear page (title and what to do) or a broken outcome.
async fn page(step: &'static str, response: reqwest::Response) -> Outcome {
    let status = response.status().as_u16();
    let html = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let body = response.text().await.unwrap_or_default();
    match title(&body) {
        Some(title) if html && status >= 400 && body.contains("What to do:") => {
            Outcome::ErrorPage { step, status, title }
        }
        _ => broken(step, format!("HTTP {status} without a clear page")),
    }
}

fn title(body: &str) -> Option<String> {
    let start = body.find("<h1>")? + 4;
    let end = start + body[start..].find("</h1>")?;
    Some(body[start..end].to_owned())
}

fn latency(step: &'static str, samples: impl Iterator<Item = Duration>) -> StepLatency {
    let mut ms: Vec<f64> = samples.map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            return 0.0;
        }
        let i = ((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1;
        ms[i]
    };
    StepLatency {
        step,
        count: ms.len(),
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}
