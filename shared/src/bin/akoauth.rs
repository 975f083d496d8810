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
//! - `akoauth consent-link --cid con_… [--tenant …]` prints a signed admin-consent link.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ms_oauth::config::{self, PublicAddress};
use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::grant::{
    DEFAULT_GRANT_LIFETIME_SECS, GrantKey, MAX_GRANT_LIFETIME_SECS, MAX_LABEL_LEN, StartGrant,
};

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
            conflicts_with = "certificate_file",
            required_unless_present = "certificate_file"
        )]
        client_secret_file: Option<String>,
        /// A PEM file with the certificate and its unencrypted private key, or - for stdin.
        #[arg(long)]
        certificate_file: Option<String>,
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
            let grant =
                tokens.token(&cid, force_refresh).await.map_err(|e| ms_oauth::error::chain(&e))?;
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
        } => {
            let request = AppRequest {
                auth_type,
                client_id,
                tenant_id,
                client_secret: client_secret_file.as_deref().map(read_credential).transpose()?,
                certificate: certificate_file.as_deref().map(read_credential).transpose()?,
            };
            match tokens.set_app(&cid, request).await {
                Ok(saved) => serde_json::to_string_pretty(&serde_json::json!({
                    "connection_id": cid,
                    "app": saved.summary,
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
                    &serde_json::json!({"connection_id": cid, "app": app}),
                )
                .map_err(|e| e.to_string()),
                None => Ok(format!("{cid}: uses the server-wide app (oauthDefault)")),
            }
        }
        AppAction::Remove { cid } => {
            let removed = tokens.remove_app(&cid).await.map_err(|e| ms_oauth::error::chain(&e))?;
            Ok(if removed {
                format!("{cid}: back to the server-wide app; sign in again")
            } else {
                format!("{cid}: had no app of its own")
            })
        }
    }
}

async fn token_service() -> Result<ms_oauth::tokens::TokenService, String> {
    let sdk = ms_oauth::runtime::aws_config().await;
    ms_oauth::tokens::TokenService::from_sdk(&config::env_lookup, &sdk).map_err(|e| e.to_string())
}

async fn start_link(grant: &StartGrant) -> Result<String, String> {
    let lookup = config::env_lookup;
    let address =
        config::required(&lookup, config::WEBHOOK_ADDRESS).map_err(|e| e.to_string()).and_then(
            |a| PublicAddress::parse(&a).map_err(|p| format!("{} {p}", config::WEBHOOK_ADDRESS)),
        )?;
    let source = config::secret_source(&lookup, config::START_LINK_KEY, config::START_LINK_KEY_ARN)
        .map_err(|e| e.to_string())?;
    let client = match source {
        config::SecretSource::SecretsManager { .. } => {
            Some(aws_sdk_secretsmanager::Client::new(&ms_oauth::runtime::aws_config().await))
        }
        config::SecretSource::Value(_) => None,
    };
    let secret = ms_oauth::secrets::CachedSecret::new(source, client)
        .get()
        .await
        .map_err(|e| ms_oauth::error::chain(&e))?;
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
