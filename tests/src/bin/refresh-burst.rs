//! `make bench-refresh-burst`: bursts of concurrent forced refreshes of one connection while
//! the identity platform fails every refresh, through the deployed wiring over HTTP. Prints
//! (and with `--json PATH` writes) how many refresh calls reached the identity platform per
//! burst, what the readers were answered, and whether any got the old token as new.
//! Usage: refresh-burst [--json PATH].

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ms_oauth::tokens::REFRESH_COOLDOWN;
use ms_oauth_tests::aws;
use ms_oauth_tests::load::LoadStack;
use ms_oauth_tests::standin::Fault;
use serde::Serialize;

/// One burst: its size, the calls it caused at the identity platform, its answers.
#[derive(Debug, Serialize)]
struct Burst {
    readers: usize,
    when: &'static str,
    refresh_calls: usize,
    answered_503_refresh_failed: usize,
    answered_otherwise: usize,
    old_token_as_new: usize,
    millis: u128,
}

async fn burst(
    stack: &LoadStack,
    cid: &ms_oauth::domain::ConnectionId,
    readers: usize,
    when: &'static str,
    old: &str,
) -> Result<Burst, String> {
    let before = stack.standin.calls().refresh_requests;
    let began = Instant::now();
    let answers = futures::future::join_all((0..readers).map(|_| stack.token(cid, true))).await;
    let millis = began.elapsed().as_millis();
    let mut b = Burst {
        readers,
        when,
        refresh_calls: stack.standin.calls().refresh_requests - before,
        answered_503_refresh_failed: 0,
        answered_otherwise: 0,
        old_token_as_new: 0,
        millis,
    };
    for answer in answers {
        let (status, body) = answer?;
        if status == 503 && body["error"] == "refresh_failed" {
            b.answered_503_refresh_failed += 1;
        } else {
            b.answered_otherwise += 1;
        }
        if body["access_token"] == old {
            b.old_token_as_new += 1;
        }
    }
    Ok(b)
}

async fn run(json: Option<&str>) -> Result<bool, String> {
    let moto = aws::shared_endpoint()?;
    let stack = LoadStack::start(&moto).await?;
    let mut bursts = Vec::new();
    for readers in [12, 50] {
        let cid = stack.connect_one().await?;
        let (_, stored) = stack.token(&cid, false).await?;
        let old = stored["access_token"].as_str().unwrap_or_default().to_owned();
        stack.standin.set_refresh_fault(Some(Fault::Status(503)));
        bursts.push(burst(&stack, &cid, readers, "outage begins", &old).await?);
        bursts.push(burst(&stack, &cid, readers, "within the cooldown", &old).await?);
        tokio::time::sleep(REFRESH_COOLDOWN + Duration::from_secs(1)).await;
        bursts.push(burst(&stack, &cid, readers, "after the cooldown", &old).await?);
        stack.standin.set_refresh_fault(None);
    }
    println!(
        "| readers | when | refresh calls | 503 refresh_failed | other | old token as new | ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for b in &bursts {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            b.readers,
            b.when,
            b.refresh_calls,
            b.answered_503_refresh_failed,
            b.answered_otherwise,
            b.old_token_as_new,
            b.millis
        );
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&bursts).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(bursts.iter().all(|b| b.old_token_as_new == 0 && b.answered_otherwise == 0))
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut json = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = args.next(),
            _ => {
                eprintln!("usage: refresh-burst [--json PATH]");
                return ExitCode::FAILURE;
            }
        }
    }
    match run(json.as_deref()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("refresh-burst: {e}");
            ExitCode::FAILURE
        }
    }
}
