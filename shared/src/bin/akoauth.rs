//! `akoauth`: operator tool for the Microsoft OAuth functions.
//!
//! Reads the same environment variables as the functions:
//! - `akoauth start-link --cid con_… --origin web [--user … --name …]` prints a signed,
//!   single-use start URL;
//! - `akoauth status --cid con_…` prints a connection's status and non-secret vars;
//! - `akoauth token --cid con_… [--force-refresh]` prints a valid access token (refreshing
//!   it first when due), exactly as the connection API would;
//! - `akoauth disconnect --cid con_…` deletes a connection's tokens and vars;
//! - `akoauth app set|show|remove --cid con_…` manages a connection's own Entra app (the
//!   client secret or certificate is read from a file or stdin, never the command line);
//! - `akoauth consent-link --cid con_… [--tenant …]` prints a signed admin-consent link;
//! - `akoauth stats` counts connections by status, failure class, auth type and tenant;
//! - `akoauth audit --cid con_… --log-group …` prints what the audit trail holds for a
//!   connection, when the trail is kept in a log group;
//! - `akoauth reseal [--after …]` seals every connection's tokens anew under
//!   `TOKEN_KMS_KEY_ID` (after a move to a new KMS key), with a key share for tokens sealed
//!   before shares; safe to stop and run again.
//!
//! Long commands report their progress on stderr; stdout holds only the answer.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ms_oauth::config::{self, PublicAddress};
use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::grant::{
    DEFAULT_GRANT_LIFETIME_SECS, GrantKey, MAX_GRANT_LIFETIME_SECS, MAX_LABEL_LEN, StartGrant,
};
use ms_oauth::wiring::Wiring;

#[derive(Debug, Parser)]
#[command(
    name = "akoauth",
    version,
    about = "Operator tool for AutoKitteh's Microsoft OAuth functions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a signed start link for a connection (what the AutoKitteh platform hands the browser).
    StartLink {
        /// The AutoKitteh connection id (con_ followed by 26 characters of [0-9a-z]).
        #[arg(long, value_parser = parse_cid)]
        cid: ConnectionId,
        /// Where the user started: web, cli, vscode or dash.
        #[arg(long, value_parser = parse_origin, default_value = "web")]
        origin: Origin,
        /// The platform user the link is for, shown before the browser goes to Microsoft
        /// [default: your login name, from USER].
        #[arg(long, value_parser = parse_label)]
        user: Option<String>,
        /// The connection's display name, shown with the user [default: the connection id].
        #[arg(long, value_parser = parse_label)]
        name: Option<String>,
        /// How long the link may wait to be opened, in seconds (at most 600). It opens once.
        #[arg(long, default_value_t = DEFAULT_GRANT_LIFETIME_SECS, value_parser = clap::value_parser!(i64).range(1..=MAX_GRANT_LIFETIME_SECS))]
        ttl: i64,
    },
    /// Print a connection's status, auth type and non-secret vars (never a token).
    Status {
        #[arg(long, value_parser = parse_cid)]
        cid: ConnectionId,
    },
    /// Print a valid access token for a connection, refreshing it first when it is due.
    Token {
        #[arg(long, value_parser = parse_cid)]
        cid: ConnectionId,
        /// Refresh even if the stored token is still fresh.
        #[arg(long)]
        force_refresh: bool,
    },
    /// Delete a connection's tokens and vars (idempotent).
    Disconnect {
        #[arg(long, value_parser = parse_cid)]
        cid: ConnectionId,
    },
    /// A connection's own Entra app (private user-delegated or daemon).
    App {
        #[command(subcommand)]
        action: AppAction,
    },
    /// Print a signed link an administrator opens to grant consent to the connection's app
    /// (its own, or the server-wide one) for an organization.
    ConsentLink {
        #[arg(long, value_parser = parse_cid)]
        cid: ConnectionId,
        #[arg(long, value_parser = parse_origin, default_value = "web")]
        origin: Origin,
        /// The organization's tenant id or domain [default: the app's tenant, else the
        /// administrator's own].
        #[arg(long)]
        tenant: Option<String>,
        /// How long the link may wait to be opened, in seconds (at most 600). It opens once.
        #[arg(long, default_value_t = MAX_GRANT_LIFETIME_SECS, value_parser = clap::value_parser!(i64).range(1..=MAX_GRANT_LIFETIME_SECS))]
        ttl: i64,
    },
    /// Count connections by status, failure class, auth type and tenant (reads the whole
    /// table; progress on stderr).
    Stats {
        /// How many tenants to list, most connections first.
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Seal every connection's tokens anew under TOKEN_KMS_KEY_ID (after moving to a new KMS
    /// key; tokens sealed before key shares get one). Connections already so are skipped, so an interrupted run is simply run
    /// again (or resumed with --after); progress on stderr.
    Reseal {
        /// Resume after this cursor (printed in the progress lines).
        #[arg(long)]
        after: Option<String>,
    },
    /// Print the audit trail of a connection, oldest first, one JSON event per line, from the
    /// log group the stack keeps it in (the AuditLogGroupName output).
    Audit {
        #[arg(long, value_parser = parse_cid)]
        cid: ConnectionId,
        #[arg(long)]
        log_group: String,
        /// How far back to look, in days.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3653))]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
enum AppAction {
    /// Set (or replace: how a credential is rotated) the connection's own app. A daemon app
    /// is proven at once with a token from its tenant.
    Set {
        #[arg(long, value_parser = parse_cid)]
        cid: ConnectionId,
        /// oauthPrivate (users sign in through the app) or daemonApp (client credentials).
        #[arg(long, value_parser = ["oauthPrivate", "daemonApp"])]
        auth_type: String,
        /// The app's Application (client) ID.
        #[arg(long)]
        client_id: String,
        /// The app's Directory (tenant) ID or a verified domain; for oauthPrivate also
        /// common, organizations or consumers [default: common].
        #[arg(long)]
        tenant_id: Option<String>,
        /// A file holding the client secret's Value, or - for stdin.
        #[arg(
            long,
            conflicts_with_all = ["certificate_file", "aws_federation"],
            required_unless_present_any = ["certificate_file", "aws_federation"]
        )]
        client_secret_file: Option<String>,
        /// A PEM file with the certificate and its unencrypted private key, or - for stdin.
        #[arg(long, conflicts_with = "aws_federation")]
        certificate_file: Option<String>,
        /// The app trusts this deployment's AWS identity (a federated identity credential);
        /// only with MICROSOFT_CLIENT_AUTH=aws_federation.
        #[arg(long)]
        aws_federation: bool,
    },
    /// Print the app's non-secret part.
    Show {
        #[arg(long, value_parser = parse_cid)]
        cid: ConnectionId,
    },
    /// Go back to the server-wide app (tokens of the connection's own app are removed).
    Remove {
        #[arg(long, value_parser = parse_cid)]
        cid: ConnectionId,
    },
}

/// The text of `path`, or of stdin for `-`, without its trailing newline.
fn read_credential(path: &str) -> Result<String, String> {
    use std::io::Read as _;
    let mut text = String::new();
    if path == "-" {
        std::io::stdin().read_to_string(&mut text).map_err(|e| format!("stdin: {e}"))?;
    } else {
        text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

fn parse_cid(s: &str) -> Result<ConnectionId, String> {
    s.parse().map_err(|e: ms_oauth::domain::InvalidInput| e.to_string())
}

fn parse_label(s: &str) -> Result<String, String> {
    if ms_oauth::grant::is_label(s) {
        Ok(s.to_owned())
    } else {
        Err(format!("must be 1 to {MAX_LABEL_LEN} characters of printable text"))
    }
}

fn parse_origin(s: &str) -> Result<Origin, String> {
    s.parse().map_err(|e: ms_oauth::domain::InvalidInput| e.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("akoauth: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<String, String> {
    match cli.command {
        Command::StartLink { cid, origin, user, name, ttl } => {
            let user = user
                .or_else(|| std::env::var("USER").ok().filter(|u| !u.trim().is_empty()))
                .unwrap_or_else(|| "akoauth".to_owned());
            let name = name.unwrap_or_else(|| cid.to_string());
            let mut grant = StartGrant::new(cid, origin, user, name)
                .map_err(|_| "the system random generator failed".to_owned())?;
            grant.lifetime_secs = ttl;
            start_link(&grant).await
        }
        Command::Status { cid } => {
            let tokens = token_service().await?;
            let stored =
                tokens.store.get_connection(&cid).await.map_err(|e| ms_oauth::error::chain(&e))?;
            let json = match stored {
                None => serde_json::json!({"connection_id": cid, "status": "init_required"}),
                Some(s) => serde_json::json!({
                    "connection_id": cid,
                    "status": s.connection.status,
                    "reason": s.connection.status_reason,
                    "auth_type": s.connection.auth_type,
                    "vars": s.connection.vars,
                    "last_refresh_at": s.connection.last_refresh_at,
                    "version": s.version,
                }),
            };
            serde_json::to_string_pretty(&json).map_err(|e| e.to_string())
        }
        Command::Token { cid, force_refresh } => {
            let tokens = token_service().await?;
            // A forced refresh that could not refresh fails (exit 2, naming the cause); it
            // never prints the old token as if it were new.
            let grant =
                tokens.token(&cid, force_refresh).await.map_err(|e| ms_oauth::error::chain(&e))?;
            if grant.stale {
                let until = grant
                    .expires_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                eprintln!(
                    "akoauth: warning: {cid}: a due refresh failed; this token is the stored one, valid until {until}"
                );
            }
            use secrecy::ExposeSecret;
            Ok(grant.access_token.expose_secret().to_owned())
        }
        Command::Disconnect { cid } => {
            let tokens = token_service().await?;
            let existed = tokens.disconnect(&cid).await.map_err(|e| ms_oauth::error::chain(&e))?;
            Ok(if existed {
                format!("{cid}: disconnected")
            } else {
                format!("{cid}: was not connected")
            })
        }
        Command::App { action } => app(action).await,
        Command::Stats { top } => stats(top).await,
        Command::Reseal { after } => reseal(after).await,
        Command::Audit { cid, log_group, days } => audit(&cid, &log_group, days).await,
        Command::ConsentLink { cid, origin, tenant, ttl } => {
            let user = std::env::var("USER").ok().filter(|u| !u.trim().is_empty());
            let mut grant = StartGrant::new(
                cid.clone(),
                origin,
                user.unwrap_or_else(|| "akoauth".to_owned()),
                cid.to_string(),
            )
            .map_err(|_| "the system random generator failed".to_owned())?;
            grant.lifetime_secs = ttl;
            let link = start_link(&grant).await?;
            let mut url = url::Url::parse(&link).map_err(|e| e.to_string())?;
            url.set_path(config::ADMIN_CONSENT_PATH);
            if let Some(tenant) = tenant {
                url.query_pairs_mut().append_pair("tenant", &tenant);
            }
            Ok(url.to_string())
        }
    }
}

async fn app(action: AppAction) -> Result<String, String> {
    use ms_oauth::registration::{AppFailure, AppRequest, advice};
    let tokens = token_service().await?;
    match action {
        AppAction::Set {
            cid,
            auth_type,
            client_id,
            tenant_id,
            client_secret_file,
            certificate_file,
            aws_federation,
        } => {
            let request = AppRequest {
                auth_type,
                client_id,
                tenant_id,
                client_secret: client_secret_file.as_deref().map(read_credential).transpose()?,
                certificate: certificate_file.as_deref().map(read_credential).transpose()?,
                aws_federation: aws_federation.then_some(true),
            };
            match tokens.set_app(&cid, request).await {
                Ok(saved) => serde_json::to_string_pretty(&serde_json::json!({
                    "connection_id": cid,
                    "app": saved.summary.answer(&cid),
                    "version": saved.version,
                    "organization": saved.organization,
                }))
                .map_err(|e| e.to_string()),
                Err(AppFailure::Refused(e)) => Err(format!(
                    "Microsoft refused the app ({}): {}{}",
                    e.reason(),
                    advice(&e),
                    if e.class() == ms_oauth::microsoft::FailureClass::AdminConsent {
                        format!(
                            "; the app is saved: run `akoauth consent-link --cid {cid}` and send the link to an administrator"
                        )
                    } else {
                        String::new()
                    }
                )),
                Err(e) => Err(ms_oauth::error::chain(&e)),
            }
        }
        AppAction::Show { cid } => {
            match tokens.app_summary(&cid).await.map_err(|e| ms_oauth::error::chain(&e))? {
                Some(app) => serde_json::to_string_pretty(
                    &serde_json::json!({"connection_id": cid, "app": app.answer(&cid)}),
                )
                .map_err(|e| e.to_string()),
                None => Ok(format!("{cid}: uses the server-wide app (oauthDefault)")),
            }
        }
        AppAction::Remove { cid } => {
            let removed = tokens
                .remove_app(&cid, &ms_oauth::audit::Caller::operator())
                .await
                .map_err(|e| ms_oauth::error::chain(&e))?;
            Ok(if removed {
                format!("{cid}: back to the server-wide app; sign in again")
            } else {
                format!("{cid}: had no app of its own")
            })
        }
    }
}

/// Progress on stderr, at most once a second (and always for the last line).
struct Progress {
    last: Option<std::time::Instant>,
}

impl Progress {
    fn new() -> Self {
        Self { last: None }
    }

    fn report(&mut self, line: impl FnOnce() -> String, last: bool) {
        let due = self.last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if due || last {
            eprintln!("akoauth: {}", line());
            self.last = Some(std::time::Instant::now());
        }
    }
}

/// The failure class a stored status reason starts with (`<class>: …`).
fn reason_class(reason: Option<&str>) -> &'static str {
    reason
        .and_then(ms_oauth::microsoft::class_of_reason)
        .map_or("unclassified", ms_oauth::microsoft::FailureClass::as_str)
}

async fn stats(top: usize) -> Result<String, String> {
    use std::collections::BTreeMap;
    let tokens = token_service().await?;
    let mut total = 0u64;
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_class: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_auth_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut refresh_failing = 0u64;
    let mut tenants: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut after: Option<String> = None;
    let mut progress = Progress::new();
    loop {
        let page = tokens
            .store
            .connection_page(after.as_deref(), 200)
            .await
            .map_err(|e| ms_oauth::error::chain(&e))?;
        for stored in &page.connections {
            let c = &stored.connection;
            total += 1;
            *by_status.entry(c.status.clone()).or_default() += 1;
            *by_auth_type.entry(c.auth_type.clone()).or_default() += 1;
            let needs = c.status == ms_oauth::store::STATUS_NEEDS_REAUTH;
            if needs {
                *by_class.entry(reason_class(c.status_reason.as_deref())).or_default() += 1;
            }
            refresh_failing += u64::from(c.refresh_failures > 0);
            let tenant = tenants.entry(c.tenant_id.clone()).or_default();
            tenant.0 += 1;
            tenant.1 += u64::from(needs);
        }
        after = page.next;
        progress.report(|| format!("read {total} connections"), after.is_none());
        if after.is_none() {
            break;
        }
    }
    let mut ranked: Vec<(String, (u64, u64))> = tenants.into_iter().collect();
    ranked.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
    let tenant_count = ranked.len();
    let tenants: Vec<serde_json::Value> = ranked
        .into_iter()
        .take(top)
        .map(|(tenant, (connections, needs_reauth))| {
            serde_json::json!({"tenant_id": tenant, "connections": connections, "needs_reauth": needs_reauth})
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "connections": total,
        "by_status": by_status,
        "needs_reauth_by_class": by_class,
        "by_auth_type": by_auth_type,
        "refresh_failing": refresh_failing,
        "tenants": tenant_count,
        "top_tenants": tenants,
    }))
    .map_err(|e| e.to_string())
}

/// What a reseal walk did.
#[derive(Debug, Default)]
struct Tally {
    seen: u64,
    resealed: u64,
    current: u64,
    busy: u64,
    failed: u64,
}

impl Tally {
    fn count(
        &mut self,
        cid: &ConnectionId,
        outcome: Result<ms_oauth::tokens::ResealOutcome, ms_oauth::tokens::TokenFailure>,
    ) {
        use ms_oauth::tokens::ResealOutcome;
        self.seen += 1;
        match outcome {
            Ok(ResealOutcome::Resealed) => self.resealed += 1,
            Ok(ResealOutcome::Current) => self.current += 1,
            Ok(ResealOutcome::Busy) => self.busy += 1,
            Err(e) => {
                self.failed += 1;
                eprintln!("akoauth: {cid}: {}", ms_oauth::error::chain(&e));
            }
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sealed anew, {} already current, {} busy, {} failed",
            self.resealed, self.current, self.busy, self.failed
        )
    }
}

async fn reseal(mut after: Option<String>) -> Result<String, String> {
    let tokens = token_service().await?;
    let configured = config::required(&config::env_lookup, config::TOKEN_KMS_KEY_ID)
        .map_err(|e| e.to_string())?;
    // Values name the key by ARN: compare with the ARN of whatever TOKEN_KMS_KEY_ID names.
    let sdk = ms_oauth::runtime::aws_config().await;
    let kms = Wiring::new(config::Role::Operator, &config::env_lookup, &sdk).kms();
    let described = kms.describe_key().key_id(&configured).send().await.map_err(|e| {
        format!("{configured}: {}", ms_oauth::error::chain(&e.into_service_error()))
    })?;
    let key_arn = described
        .key_metadata()
        .and_then(|m| m.arn())
        .ok_or_else(|| format!("{configured}: KMS answered without the key's ARN"))?
        .to_owned();
    let mut progress = Progress::new();
    let mut connections = Tally::default();
    loop {
        let page = tokens
            .store
            .connection_page(after.as_deref(), 100)
            .await
            .map_err(|e| ms_oauth::error::chain(&e))?;
        for stored in &page.connections {
            let cid = &stored.connection.connection_id;
            connections.count(cid, tokens.reseal(stored, &key_arn).await);
        }
        after = page.next;
        let resume =
            after.as_deref().map(|a| format!("; resume with --after {a}")).unwrap_or_default();
        progress.report(
            || format!("{} connections: {connections}{resume}", connections.seen),
            after.is_none(),
        );
        if after.is_none() {
            break;
        }
    }
    // Own apps' credentials, the same way (a short walk: few connections have one).
    let mut apps = Tally::default();
    let mut cursor: Option<String> = None;
    loop {
        let page = tokens
            .store
            .app_page(cursor.as_deref(), 100)
            .await
            .map_err(|e| ms_oauth::error::chain(&e))?;
        for stored in &page.apps {
            apps.count(&stored.app.connection_id, tokens.reseal_app(stored, &key_arn).await);
        }
        cursor = page.next;
        progress.report(|| format!("{} apps: {apps}", apps.seen), cursor.is_none());
        if cursor.is_none() {
            break;
        }
    }
    let summary = serde_json::json!({
        "key": key_arn,
        "connections": connections.seen,
        "resealed": connections.resealed,
        "already_current": connections.current,
        "busy": connections.busy,
        "failed": connections.failed,
        "apps": {"apps": apps.seen, "resealed": apps.resealed, "already_current": apps.current, "busy": apps.busy, "failed": apps.failed},
    });
    if connections.busy + connections.failed + apps.busy + apps.failed > 0 {
        return Err(format!(
            "{summary}\nsome connections or apps were being changed or failed: run akoauth reseal again"
        ));
    }
    serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())
}

async fn audit(cid: &ConnectionId, log_group: &str, days: u32) -> Result<String, String> {
    let sdk = ms_oauth::runtime::aws_config().await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk);
    let now = time::OffsetDateTime::now_utc();
    let since = now - time::Duration::days(i64::from(days));
    let since_millis = i64::try_from(since.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let mut events: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    let mut next: Option<String> = None;
    let mut searched = 0usize;
    let mut progress = Progress::new();
    loop {
        // The id as a quoted term narrows the search on CloudWatch's side; each match is
        // still checked below.
        let out = logs
            .filter_log_events()
            .log_group_name(log_group)
            .filter_pattern(format!("\"{cid}\""))
            .start_time(since_millis)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| {
                format!("{log_group}: {}", ms_oauth::error::chain(&e.into_service_error()))
            })?;
        for line in out.events() {
            searched += 1;
            let Some(message) = line.message() else { continue };
            let Ok(envelope) = serde_json::from_str::<serde_json::Value>(message) else { continue };
            let detail = &envelope["detail"];
            if envelope["source"] != ms_oauth::audit::AUDIT_SOURCE
                || detail["connection_id"] != cid.as_str()
            {
                continue;
            }
            // The same act delivered twice keeps one line.
            if let Some(id) = detail["event_id"].as_str() {
                events.entry(id.to_owned()).or_insert_with(|| detail.clone());
            }
        }
        next = out.next_token().map(str::to_owned);
        progress.report(
            || format!("searched {searched} log events, {} for {cid}", events.len()),
            next.is_none(),
        );
        if next.is_none() {
            break;
        }
    }
    let mut ordered: Vec<serde_json::Value> = events.into_values().collect();
    ordered.sort_by(|a, b| {
        let key = |e: &serde_json::Value| {
            let at = e["at"].as_str().and_then(|at| {
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
            });
            (at.map(time::OffsetDateTime::unix_timestamp_nanos), e["connection_version"].as_u64())
        };
        key(a).cmp(&key(b))
    });
    if ordered.is_empty() {
        return Ok(format!("{cid}: no audit events in {log_group} in the last {days} days"));
    }
    Ok(ordered.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))
}

/// The token service as the functions build it, through the one wiring, as an operator.
async fn token_service() -> Result<ms_oauth::tokens::TokenService, String> {
    let sdk = ms_oauth::runtime::aws_config().await;
    let wiring = Wiring::new(config::Role::Operator, &config::env_lookup, &sdk);
    ms_oauth::tokens::TokenService::wire(&wiring).map_err(|e| e.to_string())
}

async fn start_link(grant: &StartGrant) -> Result<String, String> {
    let lookup = config::env_lookup;
    let address =
        config::required(&lookup, config::WEBHOOK_ADDRESS).map_err(|e| e.to_string()).and_then(
            |a| PublicAddress::parse(&a).map_err(|p| format!("{} {p}", config::WEBHOOK_ADDRESS)),
        )?;
    let source = config::secret_source(&lookup, config::START_LINK_KEY, config::START_LINK_KEY_ARN)
        .map_err(|e| e.to_string())?;
    let secret = match source {
        // A key given as a value needs no AWS configuration at all (`make link`).
        config::SecretSource::Value(value) => value,
        config::SecretSource::SecretsManager { .. } => {
            let sdk = ms_oauth::runtime::aws_config().await;
            Wiring::new(config::Role::Operator, &lookup, &sdk)
                .secret(config::START_LINK_KEY, config::START_LINK_KEY_ARN)
                .map_err(|e| e.to_string())?
                .get()
                .await
                .map_err(|e| ms_oauth::error::chain(&e))?
        }
    };
    let key = GrantKey::new(secret).map_err(|e| format!("{}: {e}", config::START_LINK_KEY))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = key.sign(grant, now).map_err(|e| format!("cannot sign the grant: {e}"))?;
    let mut url = address.start_uri();
    url.query_pairs_mut()
        .append_pair("cid", grant.cid.as_str())
        .append_pair("origin", grant.origin.as_str())
        .append_pair("grant", &token);
    Ok(url.to_string())
}
