//! `make bench-load`: complete sign-ins through the local stack, first clean, then with
//! faults at the identity platform and the AWS endpoint, each run checked connection by
//! connection. Usage: load [FLOWS] [CONCURRENCY] [--json PATH] (defaults 1000, 64).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use ms_oauth_tests::aws;
use ms_oauth_tests::load::{Faults, LoadOptions, LoadReport, LoadStack};

/// The fault run's rates.
const FAULTS: Faults = Faults { microsoft: 0.05, aws_refuse: 0.02, aws_cut: 0.02 };

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut numbers = Vec::new();
    let mut json = None;
    while let Some(arg) = args.next() {
        if arg == "--json" {
            json = args.next();
        } else if let Ok(n) = arg.parse::<usize>() {
            numbers.push(n);
        } else {
            eprintln!("usage: load [FLOWS] [CONCURRENCY] [--json PATH]");
            return ExitCode::FAILURE;
        }
    }
    let flows = numbers.first().copied().unwrap_or(1000);
    let concurrency = numbers.get(1).copied().unwrap_or(64);
    match run(flows, concurrency, json.as_deref()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(flows: usize, concurrency: usize, json: Option<&str>) -> Result<bool, String> {
    let moto = aws::shared_endpoint()?;
    let stack = LoadStack::start(&moto).await?;
    // One sign-in first, so the cached client secret and warm connections do not count.
    stack.run(&LoadOptions { flows: 1, concurrency: 1, faults: None }).await?;
    let mut reports = Vec::new();
    for faults in [None, Some(FAULTS)] {
        let report = stack.run(&LoadOptions { flows, concurrency, faults }).await?;
        print(&report);
        reports.push(report);
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&reports).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
    }
    let mut ok = true;
    for report in &reports {
        for violation in report.violations() {
            eprintln!("VIOLATION: {violation}");
            ok = false;
        }
    }
    Ok(ok)
}

fn print(r: &LoadReport) {
    match &r.faults {
        None => println!("\n{} sign-ins, {} at a time, no faults", r.flows, r.concurrency),
        Some(f) => println!(
            "\n{} sign-ins, {} at a time, faults: {:.0}% of token/Graph requests 503 or timed out, \
             {:.0}% of AWS connections refused, {:.0}% of AWS answers cut",
            r.flows,
            r.concurrency,
            f.microsoft * 100.0,
            f.aws_refuse * 100.0,
            f.aws_cut * 100.0
        ),
    }
    println!(
        "  {:.1} s, {:.1} sign-ins/s, {} connected, {} failed",
        r.wall_seconds,
        r.flows_per_second,
        r.connected,
        r.flows - r.connected
    );
    println!(
        "  {:<22} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "step", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for s in &r.steps {
        println!(
            "  {:<22} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            s.step, s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
        );
    }
    for (page, n) in &r.error_pages {
        println!("  error page  {n:>5} × {page}");
    }
    println!(
        "  checks: lost {}, mixed {}, half-written {}, unclear pages {}, misleading pages {}, \
         codes presented twice {}; saved despite an error page {}",
        r.lost,
        r.mixed,
        r.half_written,
        r.broken.len(),
        r.misleading_pages,
        r.codes_presented_twice,
        r.saved_after_error_page
    );
    println!(
        "  token requests {}, Microsoft faults injected {}, AWS connections {} (refused {}, cut {})",
        r.token_requests, r.microsoft_faults_injected, r.aws.connections, r.aws.refused, r.aws.cut
    );
}
