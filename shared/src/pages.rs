//! HTML pages and the response headers every page and redirect carries.

use std::sync::LazyLock;

use askama::Template;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderValue, StatusCode, header};
use lambda_http::{Body, Response};
use sha2::{Digest, Sha256};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}\
main{max-width:36rem;margin:4rem auto;padding:2rem;background:#fff;border-radius:8px;\
border-top:6px solid #6b7280}main.ok{border-top-color:#16a34a}main.error{border-top-color:#dc2626}main.ask{border-top-color:#2563eb}\
.brand{color:#6b7280;font-size:.85rem}h1{font-size:1.4rem}.action{background:#f3f4f6;padding:.75rem;\
border-radius:6px}.reference{color:#6b7280;font-size:.8rem}code{word-break:break-all}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.4rem 1rem}dt{color:#6b7280}dd{margin:0;\
word-break:break-word}button{font:inherit;font-weight:600;color:#fff;background:#2563eb;border:0;\
border-radius:6px;padding:.6rem 1.2rem;cursor:pointer}";

/// Closes the window when it was opened as a popup by the AutoKitteh UI.
const CLOSE_POPUP_SCRIPT: &str =
    "if (window.opener) { setTimeout(function () { window.close(); }, 1500); }";

/// Keeps the confirm button unpressable until the page has been visible and focused for
/// half a second, and again after it loses either: a click meant for another window (a
/// double-click whose second half lands on a page swapped in under the pointer) cannot
/// press it. Without scripts the button works as a plain button.
const ARM_BUTTON_SCRIPT: &str = "(function () { var b = document.getElementById('continue'); \
if (!b) { return; } var t = null; b.disabled = true; \
function arm() { if (t || document.visibilityState !== 'visible' || !document.hasFocus()) { return; } \
t = setTimeout(function () { b.disabled = false; }, 500); } \
function disarm() { clearTimeout(t); t = null; b.disabled = true; } \
document.addEventListener('visibilitychange', function () { if (document.visibilityState === 'visible') { arm(); } else { disarm(); } }); \
window.addEventListener('focus', arm); window.addEventListener('blur', disarm); \
document.addEventListener('pointermove', arm); arm(); })();";

/// How long the confirm button stays unpressable after the page is visible and focused.
pub const BUTTON_ARM_MILLIS: u64 = 500;

/// The page CSP up to `form-action`: nothing may load; only our exact inline style and
/// scripts may run.
static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    let hash = |s: &str| STANDARD.encode(Sha256::digest(s.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{}'; script-src 'sha256-{}' 'sha256-{}'; \
         base-uri 'none'; frame-ancestors 'none'",
        hash(STYLE),
        hash(CLOSE_POPUP_SCRIPT),
        hash(ARM_BUTTON_SCRIPT)
    )
});

/// A form that posts back to us (the confirm button of the start page).
#[derive(Debug, Clone)]
pub struct PageForm {
    /// The path the form posts to, on this page's own origin.
    pub action: String,
    /// Hidden fields.
    pub fields: Vec<(String, String)>,
    pub button: String,
}

/// How a page reads: success or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Ok,
    Error,
    /// A question to the user.
    Neutral,
}

/// Content of a page; rendering escapes every field.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: StatusCode,
    pub tone: Tone,
    pub title: String,
    pub message: Vec<String>,
    pub action: Option<String>,
    pub reference: Option<String>,
    /// A link the user should follow next (where to sign in, say): address and text.
    pub link: Option<(String, String)>,
    /// Facts shown as a list of terms and values (who and what is being connected).
    pub facts: Vec<(String, String)>,
    pub form: Option<PageForm>,
    pub close_popup: bool,
}

#[derive(Template)]
#[template(path = "page.html")]
struct PageTemplate<'a> {
    tone: &'static str,
    title: &'a str,
    message: &'a [String],
    action: Option<&'a str>,
    reference: Option<&'a str>,
    link: Option<(&'a str, &'a str)>,
    facts: &'a [(String, String)],
    form: Option<&'a PageForm>,
    close_popup: bool,
    style: &'static str,
    script: &'static str,
    arm_script: &'static str,
}

impl Page {
    /// The success page, naming the Microsoft account that was connected.
    pub fn connected(account: &str) -> Self {
        Self {
            status: StatusCode::OK,
            tone: Tone::Ok,
            title: "Microsoft account connected".into(),
            message: vec![
                format!("AutoKitteh can now act as {account} through this connection."),
                "You can close this tab and return to AutoKitteh.".into(),
            ],
            action: None,
            reference: None,
            link: None,
            facts: Vec::new(),
            form: None,
            close_popup: true,
        }
    }

    /// An administrator granted consent for an organization: `verified` when a daemon app got
    /// its first token with it; otherwise only the browser's return says so.
    pub fn consent_granted(tenant: &str, verified: bool) -> Self {
        let (title, said, next) = if verified {
            (
                "Admin consent granted",
                format!(
                    "An administrator of the organization {tenant} granted the app its permissions."
                ),
                "The connection's daemon app got its first token with this consent: the connection is ready.",
            )
        } else {
            (
                "Admin consent reported",
                format!(
                    "Your browser came back from Microsoft saying that an administrator of the organization {tenant} granted the app its permissions. This was not checked with Microsoft."
                ),
                "Users of that organization can now try to connect their accounts; ask them to start the connection again.",
            )
        };
        Self {
            status: StatusCode::OK,
            tone: Tone::Ok,
            title: title.into(),
            message: vec![said, next.into(), "You can close this tab.".into()],
            action: None,
            reference: None,
            link: None,
            facts: Vec::new(),
            form: None,
            close_popup: false,
        }
    }

    /// The confirmation shown before the browser goes to Microsoft: who and what is being
    /// connected, a warning against links from others, and the button that continues.
    pub fn confirm(facts: Vec<(String, String)>, form: PageForm) -> Self {
        Self::question(
            "Connect a Microsoft account?",
            "AutoKitteh will ask Microsoft for access to the account you sign in with next, \
             and this connection will then act as that account.",
            "Continue only if you started this connection yourself. If someone sent you \
             this link, close this page: continuing would give their connection access to \
             your Microsoft data.",
            facts,
            form,
        )
    }

    /// The confirmation shown before an administrator goes to Microsoft's admin consent.
    pub fn confirm_admin_consent(facts: Vec<(String, String)>, form: PageForm) -> Self {
        Self::question(
            "Grant admin consent?",
            "Microsoft will ask an administrator of your organization to grant this app \
             its permissions for the whole organization.",
            "Continue only if you expected this request for the connection below. This \
             link works once: opening it spent nothing, continuing does.",
            facts,
            form,
        )
    }

    /// A question with facts and a button that posts `form`.
    fn question(
        title: &str,
        message: &str,
        action: &str,
        facts: Vec<(String, String)>,
        form: PageForm,
    ) -> Self {
        Self {
            status: StatusCode::OK,
            tone: Tone::Neutral,
            title: title.into(),
            message: vec![message.into()],
            action: Some(action.into()),
            reference: None,
            link: None,
            facts,
            form: Some(form),
            close_popup: false,
        }
    }

    /// An error page.
    pub fn error(status: StatusCode, title: &str, message: &str, action: Option<&str>) -> Self {
        Self {
            status,
            tone: Tone::Error,
            title: title.into(),
            message: vec![message.into()],
            action: action.map(str::to_owned),
            reference: None,
            link: None,
            facts: Vec::new(),
            form: None,
            close_popup: false,
        }
    }

    /// Adds a fact (term and value) to the list the page shows.
    pub fn with_fact(mut self, term: &str, value: impl Into<String>) -> Self {
        self.facts.push((term.to_owned(), value.into()));
        self
    }

    /// Adds a reference (error and AADSTS codes, trace id) for support.
    pub fn with_reference(mut self, reference: Option<String>) -> Self {
        self.reference = reference;
        self
    }

    /// Adds a link to follow next. Only http(s) addresses are shown.
    pub fn with_link(mut self, href: &str, text: &str) -> Self {
        if href.starts_with("https://") || href.starts_with("http://") {
            self.link = Some((href.to_owned(), text.to_owned()));
        }
        self
    }

    /// Adds a line to the message.
    pub fn with_line(mut self, line: impl Into<String>) -> Self {
        self.message.push(line.into());
        self
    }

    /// The HTML of the page.
    pub fn render(&self) -> String {
        let template = PageTemplate {
            tone: match self.tone {
                Tone::Ok => "ok",
                Tone::Error => "error",
                Tone::Neutral => "ask",
            },
            title: &self.title,
            message: &self.message,
            action: self.action.as_deref(),
            reference: self.reference.as_deref(),
            link: self.link.as_ref().map(|(h, t)| (h.as_str(), t.as_str())),
            facts: &self.facts,
            form: self.form.as_ref(),
            close_popup: self.close_popup,
            style: STYLE,
            script: CLOSE_POPUP_SCRIPT,
            arm_script: ARM_BUTTON_SCRIPT,
        };
        // Rendering only fails if a Display impl fails, which ours never do.
        template.render().unwrap_or_else(|_| "<!doctype html><title>Error</title>".to_owned())
    }

    /// The page as a response with the security headers, plus `cookies` to set.
    pub fn into_response(self, cookies: &[String]) -> Response<Body> {
        let mut response = Response::new(Body::Text(self.render()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        // A page without a form may post nowhere. The confirm page has no `form-action`:
        // browsers apply it to every redirect that follows the post, and Microsoft's
        // authorize may pass the browser through other origins (personal accounts at
        // login.live.com, a federated identity provider), where the sign-in would stop
        // silently. Its form is ours and posts to us; nothing else on it can post.
        let csp = match &self.form {
            Some(_) => CONTENT_SECURITY_POLICY.clone(),
            None => format!("{}; form-action 'none'", *CONTENT_SECURITY_POLICY),
        };
        if let Ok(csp) = HeaderValue::from_str(&csp) {
            headers.insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        add_common_headers(&mut response, cookies);
        response
    }
}

/// A `302 Found` to `location` with `cookies` set.
pub fn redirect(location: &str, cookies: &[String]) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::FOUND;
    match HeaderValue::from_str(location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => {
            return Page::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The sign-in could not continue.",
                Some("Try again from AutoKitteh."),
            )
            .into_response(cookies);
        }
    }
    add_common_headers(&mut response, cookies);
    response
}

fn add_common_headers(response: &mut Response<Body>, cookies: &[String]) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: &Response<Body>) -> &str {
        match response.body() {
            Body::Text(t) => t,
            _ => panic!("expected text"),
        }
    }

    #[test]
    fn pages_escape_everything_they_show() {
        let page = Page::error(
            StatusCode::BAD_REQUEST,
            "<b>t</b>",
            "<script>alert(1)</script>",
            Some("\"x\" & y"),
        )
        .with_reference(Some("<img src=x>".into()));
        let html = page.render();
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
        assert!(!html.contains("<b>t</b>"));
        assert!(!html.contains("<img"));
        assert!(html.contains("&#34;x&#34; &#38; y"));
    }

    #[test]
    fn pages_carry_the_security_headers() {
        let response = Page::connected("adele@contoso.com").into_response(&["a=b; Path=/".into()]);
        let h = response.headers();
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::SET_COOKIE], "a=b; Path=/");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'"));
        assert!(!csp.contains("unsafe-inline"));
    }

    #[test]
    fn the_success_page_names_the_account_and_closes_popups() {
        let response = Page::connected("adele@contoso.com").into_response(&[]);
        let html = body(&response);
        assert!(html.contains("adele@contoso.com"));
        assert!(html.contains(CLOSE_POPUP_SCRIPT));
        // The inline script and style match the hashes the CSP allows.
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        let hash = STANDARD.encode(Sha256::digest(CLOSE_POPUP_SCRIPT.as_bytes()));
        assert!(csp.contains(&format!("script-src 'sha256-{hash}' ")));
        assert!(html.contains(&format!("<style>{STYLE}</style>")));
    }

    #[test]
    fn links_are_escaped_and_only_http() {
        let page = Page::error(StatusCode::UNAUTHORIZED, "t", "m", None)
            .with_link("https://app.example.com/?a=1&b=\"x\"", "Sign in");
        let html = page.render();
        assert!(
            html.contains("<a href=\"https://app.example.com/?a=1&#38;b=&#34;x&#34;\">Sign in</a>")
        );
        let page = Page::error(StatusCode::UNAUTHORIZED, "t", "m", None)
            .with_link("javascript:alert(1)", "x");
        assert!(!page.render().contains("javascript:"));
    }

    #[test]
    fn error_pages_do_not_run_scripts() {
        let response = Page::error(StatusCode::BAD_REQUEST, "t", "m", None).into_response(&[]);
        assert!(!body(&response).contains("<script"));
    }

    fn confirm_page() -> Page {
        Page::confirm(
            vec![("Connection".into(), "<b>Sales</b> & \"ops\"".into())],
            PageForm {
                action: "/oauth/start/microsoft".into(),
                fields: vec![("ticket".into(), "a.b\"><x".into())],
                button: "Continue to Microsoft".into(),
            },
        )
    }

    #[test]
    fn the_confirm_page_escapes_its_facts_and_fields_and_may_post_only_to_us() {
        let response = confirm_page().into_response(&[]);
        assert_eq!(response.status(), StatusCode::OK);
        let html = body(&response);
        assert!(html.contains(
            "<dt>Connection</dt><dd>&#60;b&#62;Sales&#60;/b&#62; &#38; &#34;ops&#34;</dd>"
        ));
        assert!(html.contains(r#"<form method="post" action="/oauth/start/microsoft">"#));
        assert!(
            html.contains(r#"<input type="hidden" name="ticket" value="a.b&#34;&#62;&#60;x">"#)
        );
        assert!(
            html.contains("<button type=\"submit\" id=\"continue\">Continue to Microsoft</button>")
        );
        // Its one script arms the button, and the CSP allows exactly it.
        assert!(html.contains(&format!("<script>{ARM_BUTTON_SCRIPT}</script>")));
        assert!(!html.contains(CLOSE_POPUP_SCRIPT));
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        let hash = STANDARD.encode(Sha256::digest(ARM_BUTTON_SCRIPT.as_bytes()));
        assert!(csp.contains(&format!("'sha256-{hash}'")), "{csp}");
        // No form-action: Microsoft's authorize may pass the browser through other origins
        // after the post, and browsers apply form-action to those redirects.
        assert!(!csp.contains("form-action"), "{csp}");
        assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY");
        assert!(csp.contains("frame-ancestors 'none'"));
    }

    #[test]
    fn pages_without_a_form_may_not_post_anywhere() {
        let response = Page::connected("a").into_response(&[]);
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.ends_with("; form-action 'none'"), "{csp}");
        let page = Page::connected("a").with_fact("Connection", "<i>x</i>");
        assert!(page.render().contains("<dd>&#60;i&#62;x&#60;/i&#62;</dd>"));
    }

    #[test]
    fn redirects_carry_location_and_headers() {
        let response = redirect("https://login.example/authorize?x=1", &["c=1".into()]);
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()[header::LOCATION], "https://login.example/authorize?x=1");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }
}
