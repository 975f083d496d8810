//! The stand-in identity platform on its own, as an identity platform apart from the local
//! stack (`make test-sam-local` points `MICROSOFT_AUTHORITY_HOST` at it). It registers one
//! app: `MICROSOFT_CLIENT_ID` with `MICROSOFT_CLIENT_SECRET`, returning to
//! `WEBHOOK_ADDRESS`'s redirect URI. Usage: identity-standin ADDRESS:PORT. It prints
//! `IDENTITY_PLATFORM=<url>` once it serves, and stops on Ctrl-C or SIGTERM.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use ms_oauth::config::{self, PublicAddress};
use ms_oauth_tests::standin::{Registration, Standin};
use tokio::net::TcpListener;

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).ok_or(format!("{name} is not set"))
}

async fn run() -> Result<(), String> {
    let address = std::env::args().nth(1).ok_or("usage: identity-standin ADDRESS:PORT")?;
    let public = PublicAddress::parse(&var(config::WEBHOOK_ADDRESS)?)
        .map_err(|p| format!("{} {p}", config::WEBHOOK_ADDRESS))?;
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let standin = Standin::spawn(
        listener,
        Registration {
            client_id: var(config::MICROSOFT_CLIENT_ID)?,
            client_secret: var(config::MICROSOFT_CLIENT_SECRET)?,
            redirect_uri: public.redirect_uri().to_string(),
        },
    )
    .map_err(|e| e.to_string())?;
    println!("IDENTITY_PLATFORM={}", standin.url());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("identity-standin: {e}");
            ExitCode::FAILURE
        }
    }
}
