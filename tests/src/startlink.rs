//! Start links as the platform mints them, and opening one the way a browser does: the
//! confirmation page, then its button.

use ms_oauth::config;
use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::grant::{GrantKey, StartGrant};
use secrecy::SecretString;

/// The platform user start links name unless a test says otherwise.
pub const DEFAULT_USER: &str = "dev@autokitteh.local";

/// A start link for `cid` at `address`, signed with `key` for `user` and the connection's
/// display `name`, valid from `now` for `lifetime_secs`.
pub fn start_link(
    address: &str,
    key: &str,
    grant: &StartGrant,
    now: i64,
) -> Result<String, String> {
    let key = GrantKey::new(SecretString::from(key.to_owned())).map_err(|e| e.to_string())?;
    let token = key.sign(grant, now).map_err(|e| e.to_string())?;
    Ok(format!(
        "{address}{}?cid={}&origin={}&grant={token}",
        config::START_PATH,
        grant.cid,
        grant.origin
    ))
}

/// A grant for `cid` from `origin` by the default user, named after the connection.
pub fn grant(cid: &ConnectionId, origin: Origin, lifetime_secs: i64) -> StartGrant {
    let mut grant =
        StartGrant::new(cid.clone(), origin, DEFAULT_USER, format!("Microsoft ({cid})"))
            .unwrap_or_else(|_| unreachable!("the OS random generator failed"));
    grant.lifetime_secs = lifetime_secs;
    grant
}

/// The ticket of the confirm form on a confirmation page.
pub fn confirm_ticket(html: &str) -> Option<String> {
    let rest = html.split(r#"name="ticket" value=""#).nth(1)?;
    rest.split('"').next().map(str::to_owned)
}

/// Every hidden field of the confirm form of `html`, by name and value (our values are
/// tokens, ids and hex: nothing the page escapes but quotes, which they never hold).
pub fn confirm_fields(html: &str) -> Vec<(String, String)> {
    html.split(r#"<input type="hidden" name=""#)
        .skip(1)
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('"')?;
            let value = rest.strip_prefix(r#" value=""#)?.split('"').next()?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The `name=value` part of every `Set-Cookie` of `response`.
pub fn set_cookies(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next().map(str::to_owned))
        .collect()
}

/// Opens `link` and presses the confirm button as a browser on the same page would (same
/// origin, the page's cookie). Returns the answer to the confirmation (a 302 to Microsoft
/// when all is well), or the start link's own answer when it refused. An error means no
/// answer came at all.
pub async fn open_and_confirm(
    http: &reqwest::Client,
    link: &str,
) -> Result<reqwest::Response, String> {
    let page = http.get(link).send().await.map_err(|e| format!("start link: {e}"))?;
    if page.status() != 200 {
        // A refusal (or an outage) is the caller's to read.
        return Ok(page);
    }
    let cookies = set_cookies(page.headers());
    let body = page.text().await.map_err(|e| format!("start link: {e}"))?;
    let ticket = confirm_ticket(&body).ok_or("the start page has no confirm form")?;
    let url = url::Url::parse(link).map_err(|e| e.to_string())?;
    let post = format!("{}{}", url.origin().ascii_serialization(), url.path());
    http.post(post)
        .header(reqwest::header::ORIGIN, url.origin().ascii_serialization())
        .header("sec-fetch-site", "same-origin")
        .header(reqwest::header::COOKIE, cookies.join("; "))
        .form(&[("ticket", ticket)])
        .send()
        .await
        .map_err(|e| format!("confirm: {e}"))
}

/// The flow's browser-binding cookie (`name=value`) among the `Set-Cookie`s of the answer
/// to a confirmation (which also clears the confirm cookie).
pub fn binding_cookie(headers: &reqwest::header::HeaderMap) -> Option<String> {
    set_cookies(headers).into_iter().find(|c| {
        let (name, value) = c.split_once('=').unwrap_or((c, ""));
        name.starts_with(ms_oauth::state::COOKIE_PREFIX)
            && !name.starts_with(ms_oauth::state::CONFIRM_COOKIE_PREFIX)
            && !value.is_empty()
    })
}
