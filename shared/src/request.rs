//! Reading what the browser sent: query parameters and cookies, strictly.

use std::borrow::Cow;

use cookie::{Cookie, SameSite};
use lambda_http::{Request, RequestExt};

use crate::autokitteh::{AkToken, LOGGED_IN_COOKIE, SESSION_COOKIE};
use crate::error::FlowError;

/// The longest query string we read at all.
pub const MAX_QUERY_LEN: usize = 16 * 1024;
/// The longest form body we read (the confirm form holds one field of about 600 bytes).
pub const MAX_FORM_LEN: usize = 4096;

/// Query parameters of a request, each name at most once.
#[derive(Debug)]
pub struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    /// Reads the query string. API Gateway puts it in the URI (HTTP API) and in an extension
    /// (both payload versions); we prefer the extension and fall back to the URI.
    pub fn from_request(req: &'a Request) -> Result<Self, FlowError> {
        let pairs: Vec<(Cow<'a, str>, Cow<'a, str>)> = match req.query_string_parameters_ref() {
            Some(map) => map.iter().map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v))).collect(),
            None => {
                let raw = req.uri().query().unwrap_or("");
                if raw.len() > MAX_QUERY_LEN {
                    return Err(FlowError::BadQuery("the link is too long"));
                }
                url::form_urlencoded::parse(raw.as_bytes()).collect()
            }
        };
        let total: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > MAX_QUERY_LEN {
            return Err(FlowError::BadQuery("the link is too long"));
        }
        Ok(Self { pairs })
    }

    /// Reads an `application/x-www-form-urlencoded` body (API Gateway may hand it over
    /// base64-decoded as binary; both are read the same).
    pub fn from_form(req: &'a Request) -> Result<Self, FlowError> {
        let is_form = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(FlowError::BadQuery("the confirmation is not a form post"));
        }
        let body: &[u8] = req.body().as_ref();
        if body.len() > MAX_FORM_LEN {
            return Err(FlowError::BadQuery("the form is too long"));
        }
        Ok(Self { pairs: url::form_urlencoded::parse(body).collect() })
    }

    /// The value of `name`, if present once; an error if repeated or longer than `max_len`.
    pub fn single(&self, name: &'static str, max_len: usize) -> Result<Option<&str>, FlowError> {
        let mut values = self.pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_ref());
        let first = values.next();
        if values.next().is_some() {
            return Err(FlowError::BadQuery(repeated(name)));
        }
        match first {
            Some(v) if v.len() > max_len => Err(FlowError::BadQuery(too_long(name))),
            other => Ok(other),
        }
    }
}

fn repeated(name: &'static str) -> &'static str {
    match name {
        "cid" => "the connection id is given more than once",
        "origin" => "the origin is given more than once",
        "grant" => "the start grant is given more than once",
        "state" => "the state is given more than once",
        "code" => "the code is given more than once",
        "ticket" => "the confirmation is given more than once",
        _ => "a parameter is given more than once",
    }
}

fn too_long(name: &'static str) -> &'static str {
    match name {
        "cid" => "the connection id is too long",
        "origin" => "the origin is too long",
        "grant" => "the start grant is too long",
        "state" => "the state is too long",
        "code" => "the code is too long",
        "ticket" => "the confirmation is too long",
        _ => "a parameter is too long",
    }
}

/// A request carried one cookie name twice. Browsers send every cookie whose domain and
/// path match, so two of one name mean one was planted from elsewhere (a sibling subdomain
/// setting `Domain=` the parent, or a wider `Path`): which one is the user's cannot be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the request carries the cookie {0} more than once")]
pub struct AmbiguousCookie(pub String);

/// The value of cookie `name` from the request's `Cookie` headers; refused when the request
/// carries it more than once.
pub fn cookie<'r>(req: &'r Request, name: &str) -> Result<Option<&'r str>, AmbiguousCookie> {
    let mut found = req
        .headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| Cookie::split_parse(h).filter_map(Result::ok))
        .filter(|c| c.name() == name)
        .map(|c| c.value_raw());
    let first = found.next();
    if found.next().is_some() {
        return Err(AmbiguousCookie(name.to_owned()));
    }
    Ok(first.flatten())
}

/// The AutoKitteh session the browser holds: both of AutoKitteh's cookies, as AutoKitteh
/// itself requires (`ak_user_session` and `ak_logged_in=true`), each exactly once.
pub fn ak_session(req: &Request) -> Result<Option<AkToken>, AmbiguousCookie> {
    let (logged_in, session) = (cookie(req, LOGGED_IN_COOKIE)?, cookie(req, SESSION_COOKIE)?);
    if logged_in != Some("true") {
        return Ok(None);
    }
    Ok(session.and_then(AkToken::new))
}

/// An `HttpOnly; Secure` cookie for `path`, gone after `max_age_secs`.
fn our_cookie(
    name: &str,
    value: &str,
    same_site: SameSite,
    path: &str,
    max_age_secs: i64,
) -> String {
    Cookie::build((name, value))
        .http_only(true)
        .secure(true)
        .same_site(same_site)
        .path(path.to_owned())
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build()
        .to_string()
}

/// The browser-binding cookie: sent only to our redirect path (not to AutoKitteh's other
/// `/oauth/*` routes on the same host), on Microsoft's top-level redirect back
/// (`SameSite=Lax`), gone after `max_age_secs`.
pub fn binding_cookie(name: &str, value: &str, max_age_secs: i64) -> String {
    our_cookie(name, value, SameSite::Lax, crate::config::REDIRECT_PATH, max_age_secs)
}

/// The confirm cookie: set with the confirmation page, sent back only with a post from our
/// own pages (`SameSite=Strict`), so another site cannot confirm for the user.
pub fn confirm_cookie(name: &str, value: &str, max_age_secs: i64) -> String {
    our_cookie(name, value, SameSite::Strict, "/oauth/start/", max_age_secs)
}

/// Whether a post says it comes from a page of `origin` (e.g. `https://api.example.com`).
/// Browsers send `Sec-Fetch-Site` and usually `Origin`; a page with `no-referrer` makes the
/// latter `null`, which proves nothing either way. Either header naming another site
/// refuses the post; the `SameSite=Strict` confirm cookie is the check that always applies.
pub fn posted_from(req: &Request, origin: &str) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site").is_some_and(|site| site != "same-origin") {
        return false;
    }
    match header("origin") {
        None | Some("null") => true,
        Some(sent) => sent.eq_ignore_ascii_case(origin),
    }
}

/// Deletes the browser-binding cookie once its flow is over.
pub fn clear_cookie(name: &str) -> String {
    binding_cookie(name, "", 0)
}
