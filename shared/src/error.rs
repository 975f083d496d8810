//! The one place flow errors become pages: what happened, what to do, and the right status.
//! Client faults get a 4xx with a short safe message; server faults get an opaque 5xx page
//! and one log line with the cause chain (which never holds a secret).

use std::error::Error as StdError;
use std::fmt::Write as _;

use http::StatusCode;
use lambda_http::{Body, Response};

use crate::apps::AppError;
use crate::autokitteh::{AkError, VarLimit};
use crate::config::Config;
use crate::crypto::CryptoError;
use crate::domain::InvalidInput;
use crate::grant::GrantError;
use crate::microsoft::{GraphError, MicrosoftError, TokenError};
use crate::pages::Page;
use crate::secrets::SecretError;
use crate::store::{ConsumeError, StoreError};

/// Everything that can end a flow early.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("invalid request: {0}")]
    InvalidInput(#[from] InvalidInput),
    #[error("invalid request: {0}")]
    BadQuery(&'static str),
    #[error("method not allowed")]
    Method,
    /// A cookie of ours or AutoKitteh's came twice (one planted from elsewhere).
    #[error(transparent)]
    AmbiguousCookie(#[from] crate::request::AmbiguousCookie),
    /// AutoKitteh's own `/microsoft/oauth` (tokens in the web address), refused.
    #[error("a finish address that takes tokens in the web address was called")]
    TokensInAddress,
    #[error("start grant refused: {0}")]
    Grant(#[from] GrantError),
    #[error("state refused: {0}")]
    State(ConsumeError),
    #[error("Microsoft returned an error: {0}")]
    Microsoft(Box<MicrosoftError>),
    /// Microsoft refused the connection's own app (client id given).
    #[error("Microsoft refused the connection's app {0}: {1}")]
    OwnApp(String, Box<MicrosoftError>),
    #[error("the connection's app credential cannot be used: {0}")]
    AppCredential(#[from] AppError),
    #[error("the connection uses a daemon app, which no one signs in to")]
    DaemonApp,
    #[error("the connection's app changed during the sign-in")]
    AppChanged,
    /// Microsoft wants an administrator's consent; `link` is a one-time admin-consent link
    /// for the app, to pass to one.
    #[error("an administrator must consent: {cause}")]
    NeedsAdminConsent { cause: Box<FlowError>, link: String },
    /// An administrator granted consent, but the app still cannot get a token in its tenant.
    #[error("admin consent is not in effect for the daemon app yet: {0}")]
    ConsentPending(Box<MicrosoftError>),
    #[error("code exchange failed")]
    Token(#[from] TokenError),
    #[error("Graph read failed")]
    Graph(#[from] GraphError),
    #[error("state store failed")]
    Store(#[from] StoreError),
    #[error("secret unavailable")]
    Secret(#[from] SecretError),
    #[error("encryption failed")]
    Crypto(#[from] CryptoError),
    #[error("not signed in to AutoKitteh")]
    AkSignedOut,
    #[error("the connection is unknown to this AutoKitteh user")]
    AkConnectionNotFound,
    #[error("the connection belongs to integration {0:?}")]
    AkWrongIntegration(String),
    #[error("the sign-in was started by another AutoKitteh user")]
    AkOtherUser,
    #[error("the sign-in was not started inside AutoKitteh")]
    AkNotStartedHere,
    #[error("AutoKitteh call failed")]
    AutoKitteh(#[from] AkError),
    #[error("the connection's vars exceed AutoKitteh's limits")]
    AkLimit(#[from] VarLimit),
    #[error("no answer within the function's time")]
    TimedOut,
    #[error("configuration problem: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<ConsumeError> for FlowError {
    fn from(e: ConsumeError) -> Self {
        match e {
            ConsumeError::Store(s) => FlowError::Store(s),
            other => FlowError::State(other),
        }
    }
}

/// What pages may mention about the deployment.
#[derive(Debug, Clone)]
pub struct PageContext {
    /// The exact redirect URI operators must register.
    pub redirect_uri: String,
    /// Where a user signs in to AutoKitteh (AutoKitteh mode).
    pub sign_in_url: Option<String>,
}

impl PageContext {
    pub fn new(config: &Config) -> Self {
        Self {
            redirect_uri: config.redirect_url().to_string(),
            sign_in_url: config.autokitteh.as_ref().map(|ak| ak.ui_url.to_string()),
        }
    }
}

const START_AGAIN: &str = "Go back to AutoKitteh and start the connection again.";
const TRY_AGAIN: &str = "Wait a minute, then start the connection again from AutoKitteh.";
const ASK_ADMIN: &str =
    "Ask the administrator of this AutoKitteh deployment to fix its Microsoft app settings.";

impl FlowError {
    /// The failure class metrics count this error under: Microsoft's classes, `refused` for
    /// requests we turn away (bad or reused links, other browsers, other users), and
    /// `internal` for our own faults.
    pub fn metric_class(&self) -> &'static str {
        use crate::microsoft::FailureClass;
        match self {
            FlowError::Microsoft(e) | FlowError::OwnApp(_, e) => e.class().as_str(),
            FlowError::Token(e) => e.class().as_str(),
            FlowError::NeedsAdminConsent { .. } | FlowError::ConsentPending(_) => {
                FailureClass::AdminConsent.as_str()
            }
            FlowError::AppCredential(_) | FlowError::AppChanged => {
                FailureClass::AppMisconfigured.as_str()
            }
            FlowError::Graph(_)
            | FlowError::Store(_)
            | FlowError::Secret(_)
            | FlowError::Crypto(_)
            | FlowError::TimedOut => FailureClass::Transient.as_str(),
            FlowError::AutoKitteh(e) if e.is_outage() => FailureClass::Transient.as_str(),
            FlowError::Config(_) | FlowError::Internal(_) | FlowError::AkLimit(_) => "internal",
            _ => "refused",
        }
    }

    /// Microsoft's AADSTS code, when Microsoft ended the flow with one.
    pub fn aadsts(&self) -> Option<u32> {
        match self {
            FlowError::Microsoft(e) | FlowError::OwnApp(_, e) | FlowError::ConsentPending(e) => {
                e.error_codes.first().copied()
            }
            FlowError::Token(TokenError::Rejected(e)) => e.error_codes.first().copied(),
            FlowError::NeedsAdminConsent { cause, .. } => cause.aadsts(),
            _ => None,
        }
    }

    /// The dependency whose outage this is, if any (for [`crate::metrics::name::DEPENDENCY_FAILURE`]).
    pub fn failed_dependency(&self) -> Option<&'static str> {
        use crate::metrics as m;
        match self {
            FlowError::Store(e) => m::store_dependency(e),
            FlowError::State(ConsumeError::Store(e)) => m::store_dependency(e),
            FlowError::Crypto(e) => m::crypto_dependency(e),
            FlowError::Secret(SecretError::Unavailable { .. }) => Some("secrets_manager"),
            FlowError::Token(e) => m::token_dependency(e),
            FlowError::Graph(GraphError::Unavailable(_)) => Some("microsoft"),
            FlowError::AutoKitteh(e) if e.is_outage() => Some("autokitteh"),
            FlowError::NeedsAdminConsent { cause, .. } => cause.failed_dependency(),
            _ => None,
        }
    }

    /// True for faults of ours or of a dependency (5xx).
    pub fn is_server_fault(&self) -> bool {
        self.page(&PageContext { redirect_uri: String::new(), sign_in_url: None })
            .status
            .is_server_error()
    }

    /// Logs the error once and renders its page. `cookies` are still set (e.g. to clear the
    /// browser-binding cookie).
    pub fn into_response(self, ctx: &PageContext, cookies: &[String]) -> Response<Body> {
        let page = self.page(ctx);
        if page.status.is_server_error() {
            tracing::error!(status = page.status.as_u16(), error = %chain(&self), "flow failed");
        } else {
            tracing::warn!(status = page.status.as_u16(), error = %chain(&self), "flow refused");
        }
        page.into_response(cookies)
    }

    /// The page for this error.
    pub fn page(&self, ctx: &PageContext) -> Page {
        use StatusCode as S;
        match self {
            FlowError::InvalidInput(e) => Page::error(
                S::BAD_REQUEST,
                "This sign-in link is not valid",
                &format!("The link that brought you here is incomplete or damaged: {e}."),
                Some(START_AGAIN),
            ),
            FlowError::BadQuery(what) => Page::error(
                S::BAD_REQUEST,
                "This sign-in link is not valid",
                &format!("The link that brought you here is incomplete or damaged: {what}."),
                Some(START_AGAIN),
            ),
            FlowError::Method => Page::error(
                S::METHOD_NOT_ALLOWED,
                "This address only takes links",
                "Open the sign-in link in a browser; other kinds of requests are not accepted here.",
                Some(START_AGAIN),
            ),
            FlowError::AmbiguousCookie(_) => Page::error(
                S::BAD_REQUEST,
                "Your browser sent two sign-ins",
                "This browser sent two cookies of the same name for this site, so it cannot be told whose sign-in this is. One may have been set by another site. Nothing was started or saved.",
                Some(
                    "Clear this site's cookies (or sign out of AutoKitteh and sign in again), then start the connection again.",
                ),
            ),
            FlowError::TokensInAddress => Page::error(
                S::GONE,
                "This address is not used",
                "Microsoft connections are no longer finished through this address: it would take tokens from the web address and write them into whatever connection it names. Nothing was saved.",
                Some(
                    "Connect again from the connection's page in AutoKitteh; the sign-in now finishes by itself. If a link or page sent you here, do not trust it.",
                ),
            ),
            FlowError::Grant(GrantError::Expired) => Page::error(
                S::FORBIDDEN,
                "This sign-in link has expired",
                "Sign-in links from AutoKitteh are valid for a few minutes only.",
                Some(START_AGAIN),
            ),
            FlowError::Grant(GrantError::Used) => Page::error(
                S::FORBIDDEN,
                "This sign-in link was already used",
                "Each sign-in link from AutoKitteh opens once. It was opened before, here or elsewhere.",
                Some(
                    "Start the connection again from AutoKitteh for a new link. If you did not open it before, someone else may have: tell your AutoKitteh administrator.",
                ),
            ),
            FlowError::Grant(GrantError::ConfirmationInvalid) => Page::error(
                S::BAD_REQUEST,
                "This confirmation is not valid",
                "The confirmation that brought you here is missing, damaged or was altered.",
                Some(START_AGAIN),
            ),
            FlowError::Grant(GrantError::ConfirmationExpired) => Page::error(
                S::BAD_REQUEST,
                "This confirmation took too long",
                "More than 10 minutes passed between opening the sign-in link and confirming.",
                Some(START_AGAIN),
            ),
            FlowError::Grant(GrantError::OtherBrowser) => Page::error(
                S::FORBIDDEN,
                "Confirm in the browser that opened the link",
                "The confirmation arrived without the cookie this page set when the link was opened: it came from another browser or another site, or cookies are blocked.",
                Some(
                    "Start the connection again from AutoKitteh and confirm in the same browser, with cookies allowed for this site.",
                ),
            ),
            FlowError::Grant(GrantError::CrossSite) => Page::error(
                S::FORBIDDEN,
                "This confirmation came from another site",
                "Only the confirmation page of this address can start a sign-in; another site tried to post it for you.",
                Some(START_AGAIN),
            ),
            FlowError::Grant(_) => Page::error(
                S::FORBIDDEN,
                "This sign-in link was not issued by AutoKitteh",
                "The link is missing its signature, was altered, or belongs to another connection.",
                Some(
                    "Start the connection from the AutoKitteh UI, CLI or VS Code extension, not from a copied link.",
                ),
            ),
            FlowError::State(ConsumeError::Expired) => Page::error(
                S::BAD_REQUEST,
                "This sign-in took too long",
                "More than 10 minutes passed between starting the connection and returning from Microsoft.",
                Some(START_AGAIN),
            ),
            FlowError::State(ConsumeError::WrongBrowser) => Page::error(
                S::BAD_REQUEST,
                "Finish the sign-in in the browser where you started it",
                "This sign-in was started in another browser (or its cookie was blocked or cleared).",
                Some(
                    "Start the connection again and complete the Microsoft sign-in in the same browser window, with cookies allowed.",
                ),
            ),
            FlowError::State(_) => Page::error(
                S::BAD_REQUEST,
                "This sign-in is unknown or already finished",
                "The link Microsoft sent you back with does not match a sign-in in progress. It may have been used already.",
                Some(START_AGAIN),
            ),
            FlowError::Microsoft(e) => microsoft_page(e, ctx),
            FlowError::OwnApp(client_id, e) => own_app_page(client_id, e, ctx),
            FlowError::Token(TokenError::Credential(e)) | FlowError::AppCredential(e) => {
                Page::error(
                    S::BAD_GATEWAY,
                    "The connection's own Microsoft app cannot be used",
                    &format!("Nothing was saved: {e}."),
                    Some(
                        "The owner of the connection's app must fix it in Microsoft Entra ID (a new certificate or client secret) and set it on the connection again, or set another app of their own.",
                    ),
                )
            }
            FlowError::Token(TokenError::Federation(e)) if e.is_transient() => Page::error(
                S::SERVICE_UNAVAILABLE,
                "This service is temporarily unavailable",
                "It could not prove its identity to Microsoft just now (AWS did not answer). Nothing was saved.",
                Some(TRY_AGAIN),
            ),
            FlowError::Token(TokenError::Federation(_)) => Page::error(
                S::BAD_GATEWAY,
                "This service cannot sign in to Microsoft",
                "It authenticates to Microsoft with its AWS identity, and AWS refused to issue one (outbound identity federation is off for the account, or the function may not ask). Nothing was saved.",
                Some(
                    "The operator must enable IAM outbound identity federation on the AWS account and allow sts:GetWebIdentityToken for the functions (see the deployment guide).",
                ),
            ),
            FlowError::Token(TokenError::OtherTenant(_)) => Page::error(
                S::FORBIDDEN,
                "This account belongs to another organization",
                "The connection's Microsoft app accepts accounts of its own directory only, and the account you chose belongs to another one. Nothing was saved.",
                Some(
                    "Start the connection again and sign in with an account of the app's organization.",
                ),
            ),
            FlowError::DaemonApp => Page::error(
                S::BAD_REQUEST,
                "This connection signs in as an app",
                "The connection uses a daemon app: it gets its tokens with the app's own credential, so no one signs in to it.",
                Some(
                    "If the app lacks permissions, a Microsoft Entra administrator of its tenant must grant them (admin consent).",
                ),
            ),
            FlowError::NeedsAdminConsent { cause, link } => Page::error(
                S::FORBIDDEN,
                "An administrator must approve this app",
                "Your organization requires an administrator to consent to the permissions this connection needs, so nothing was connected.",
                Some(
                    "Send the link below to a Microsoft Entra administrator of your organization. It works once, within 24 hours; after they approve, start the connection again.",
                ),
            )
            .with_link(link, "Admin consent link for your administrator")
            .with_reference(match cause.as_ref() {
                FlowError::Microsoft(e)
                | FlowError::OwnApp(_, e)
                | FlowError::Token(TokenError::Rejected(e)) => Some(reference(e)),
                _ => None,
            }),
            FlowError::ConsentPending(e) => Page::error(
                S::CONFLICT,
                "The consent is not in effect yet",
                "Microsoft reported the consent, but the connection's daemon app still cannot get a token in its tenant. Consent can take a few minutes to apply, or it was granted in another organization than the app's.",
                Some(
                    "Wait a few minutes, then set the app on the connection again; if it still fails, grant consent as an administrator of the app's own tenant.",
                ),
            )
            .with_reference(Some(reference(e))),
            FlowError::AppChanged => Page::error(
                S::CONFLICT,
                "The connection's app changed during the sign-in",
                "The connection's Microsoft app was replaced or removed after this sign-in started, so its code cannot be used. Nothing was saved.",
                Some(START_AGAIN),
            ),
            FlowError::Token(TokenError::Rejected(e)) => microsoft_page(e, ctx),
            FlowError::Token(TokenError::Unavailable(_))
            | FlowError::Graph(GraphError::Unavailable(_) | GraphError::Status(500..)) => {
                Page::error(
                    S::SERVICE_UNAVAILABLE,
                    "Microsoft is not responding",
                    "Microsoft's sign-in service did not answer in time. Nothing was saved.",
                    Some(TRY_AGAIN),
                )
            }
            FlowError::Token(_) | FlowError::Graph(_) => Page::error(
                S::BAD_GATEWAY,
                "Microsoft sent an unexpected answer",
                "The sign-in could not be completed. Nothing was saved.",
                Some(TRY_AGAIN),
            ),
            FlowError::Store(StoreError::Duplicate) => Page::error(
                S::SERVICE_UNAVAILABLE,
                "The sign-in could not start",
                "Please try once more.",
                Some(TRY_AGAIN),
            ),
            // No "nothing was saved" here: when the final write's answer is lost, the write
            // may have been applied.
            FlowError::Store(_) => Page::error(
                S::SERVICE_UNAVAILABLE,
                "AutoKitteh is temporarily unavailable",
                "A service the connection depends on did not respond.",
                Some(TRY_AGAIN),
            ),
            FlowError::Secret(_) | FlowError::Crypto(_) => Page::error(
                S::SERVICE_UNAVAILABLE,
                "AutoKitteh is temporarily unavailable",
                "A service the connection depends on did not respond. Nothing was saved.",
                Some(TRY_AGAIN),
            ),
            FlowError::AkSignedOut => sign_in(
                ctx,
                Page::error(
                    S::UNAUTHORIZED,
                    "Sign in to AutoKitteh first",
                    "Connecting a Microsoft account needs your AutoKitteh sign-in, and this browser is not signed in to AutoKitteh.",
                    Some(
                        "Sign in to AutoKitteh in this browser, then start the connection again from the connection's page.",
                    ),
                ),
            ),
            FlowError::AutoKitteh(AkError::Unauthenticated(_)) => sign_in(
                ctx,
                Page::error(
                    S::UNAUTHORIZED,
                    "Your AutoKitteh sign-in is not valid",
                    "AutoKitteh did not accept this browser's sign-in: it may have ended, or the account is disabled. Nothing was saved.",
                    Some("Sign in to AutoKitteh again, then start the connection again."),
                ),
            ),
            FlowError::AkConnectionNotFound => Page::error(
                S::NOT_FOUND,
                "This connection was not found",
                "AutoKitteh has no connection with this id that you may use: it may have been deleted, or it belongs to an organization you are not a member of.",
                Some(
                    "Open the connection from its project in AutoKitteh while signed in as a member of its organization.",
                ),
            ),
            FlowError::AkWrongIntegration(_) => Page::error(
                S::BAD_REQUEST,
                "This is not a Microsoft connection",
                "The connection exists, but it belongs to another AutoKitteh integration, so it cannot be connected to a Microsoft account here.",
                Some("Start from a Microsoft (or Microsoft Teams) connection in AutoKitteh."),
            ),
            FlowError::AkOtherUser => sign_in(
                ctx,
                Page::error(
                    S::FORBIDDEN,
                    "Finish as the AutoKitteh user who started",
                    "This browser is signed in to AutoKitteh as someone other than the user who started this connection, so the Microsoft account was not connected. Nothing was saved.",
                    Some(
                        "If you opened a link someone sent you, close this page. Otherwise sign in to AutoKitteh as yourself and start the connection again.",
                    ),
                ),
            ),
            FlowError::AkNotStartedHere => Page::error(
                S::BAD_REQUEST,
                "This sign-in is unknown or already finished",
                "This sign-in was not started from AutoKitteh. Nothing was saved.",
                Some(START_AGAIN),
            ),
            FlowError::AutoKitteh(e) if e.is_permission_denied() => Page::error(
                S::FORBIDDEN,
                "AutoKitteh did not let you save this connection",
                "AutoKitteh refused to store the Microsoft account in this connection for your user. You may no longer be a member of its organization.",
                Some(
                    "Ask an owner of the connection's AutoKitteh organization to add you, or to connect it themselves.",
                ),
            ),
            FlowError::AutoKitteh(e) if e.is_outage() => Page::error(
                S::SERVICE_UNAVAILABLE,
                "AutoKitteh is not responding",
                "AutoKitteh did not answer in time or reported a temporary problem.",
                Some(TRY_AGAIN),
            ),
            FlowError::AutoKitteh(_) => Page::error(
                S::BAD_GATEWAY,
                "AutoKitteh sent an unexpected answer",
                "The connection could not be completed.",
                Some(TRY_AGAIN),
            ),
            FlowError::AkLimit(_) => Page::error(
                S::BAD_GATEWAY,
                "The Microsoft sign-in is too large for AutoKitteh",
                "Microsoft issued a token longer than AutoKitteh can store in a connection variable, so nothing was saved rather than saving a cut token.",
                Some(
                    "Ask the administrator of this deployment to request fewer Microsoft permissions (MICROSOFT_SCOPES).",
                ),
            ),
            FlowError::TimedOut => Page::error(
                S::SERVICE_UNAVAILABLE,
                "This is taking too long",
                "A service the connection depends on is slow to answer, so the connection stopped waiting. Whatever it had saved is whole.",
                Some(TRY_AGAIN),
            ),
            FlowError::Config(_) | FlowError::Internal(_) => Page::error(
                S::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The connection could not be completed. Nothing was saved.",
                Some(TRY_AGAIN),
            ),
        }
    }
}

/// Adds the link to AutoKitteh's sign-in, where the deployment has one.
fn sign_in(ctx: &PageContext, page: Page) -> Page {
    match &ctx.sign_in_url {
        Some(url) => page.with_link(url, "Open AutoKitteh"),
        None => page,
    }
}

/// Pages for Microsoft's own errors: branch on `error`, refine with the AADSTS codes.
fn microsoft_page(e: &MicrosoftError, ctx: &PageContext) -> Page {
    use StatusCode as S;
    let code = |c: u32| e.has_code(c);
    let page = if e.error == "access_denied" && (code(65004) || e.error_codes.is_empty()) {
        Page::error(
            S::FORBIDDEN,
            "You declined the permissions",
            "The connection needs the permissions Microsoft asked you about, so nothing was connected.",
            Some(
                "Start the connection again and accept the permissions, or ask your Microsoft administrator for consent.",
            ),
        )
    } else if code(50011) {
        Page::error(
            S::BAD_REQUEST,
            "The app's redirect URI is not registered",
            &format!(
                "Microsoft does not know this deployment's redirect URI, {}.",
                ctx.redirect_uri
            ),
            Some(
                "An administrator must add it, exactly, as a \"Web\" redirect URI of the app registration in Microsoft Entra ID.",
            ),
        )
    } else if code(50194) {
        Page::error(
            S::BAD_REQUEST,
            "The app is single-tenant",
            "The Microsoft app registration accepts accounts from one directory only, but sign-in used the multi-tenant endpoint.",
            Some(
                "An administrator must set MICROSOFT_TENANT_ID to the app's Directory (tenant) ID, or make the app multi-tenant.",
            ),
        )
    } else if code(9_002_332) {
        Page::error(
            S::BAD_REQUEST,
            "Personal Microsoft accounts are not supported",
            "The app registration does not accept personal Microsoft accounts.",
            Some(
                "Sign in with a work or school account, or ask an administrator to change the app's supported account types.",
            ),
        )
    } else if code(700_016) {
        Page::error(
            S::BAD_REQUEST,
            "The Microsoft app was not found",
            "Your Microsoft directory does not know the app this deployment uses.",
            Some(
                "An administrator must check MICROSOFT_CLIENT_ID and MICROSOFT_TENANT_ID, or consent to the app in your directory.",
            ),
        )
    } else if code(70021) || code(700_211) || code(700_212) || code(700_213) {
        Page::error(
            S::BAD_GATEWAY,
            "The server's Microsoft credentials were refused",
            "Microsoft does not trust this deployment's AWS identity for its app: no federated identity credential of the app matches it. Nothing was saved.",
            Some(
                "An administrator must add a federated identity credential to the Microsoft Entra app with the deployment's issuer, subject and audience (see the deployment guide); a connection's own app names the connection in its audience (api://AzureADTokenExchange/connections/<connection id>).",
            ),
        )
    } else if e.error == "invalid_client" || code(7_000_215) || code(7_000_222) {
        Page::error(
            S::BAD_GATEWAY,
            "The server's Microsoft credentials were refused",
            "Microsoft rejected this deployment's client secret; it may have expired. Nothing was saved.",
            Some(
                "An administrator must create a new client secret in Microsoft Entra ID and store it in the deployment's client secret.",
            ),
        )
    } else if e.error == "consent_required" || code(65001) || code(90094) || code(90095) {
        Page::error(
            S::FORBIDDEN,
            "An administrator must approve this app",
            "Your organization requires an administrator to consent to the permissions this connection needs.",
            Some(
                "Ask a Microsoft Entra administrator of your organization to grant admin consent to the app, then start again.",
            ),
        )
    } else if code(50076) || code(50079) || code(53003) || e.error == "interaction_required" {
        Page::error(
            S::FORBIDDEN,
            "Your organization's sign-in policy stopped this sign-in",
            "Multi-factor authentication, enrolment or a Conditional Access policy blocked the sign-in.",
            Some(
                "Complete the requirements your organization shows at Microsoft, or contact your IT administrator, then start again.",
            ),
        )
    } else if e.error == "invalid_grant" || code(70008) || code(54005) || code(501_481) {
        Page::error(
            S::BAD_REQUEST,
            "This sign-in can no longer be completed",
            "Microsoft's one-time sign-in code expired or was already used.",
            Some(START_AGAIN),
        )
    } else if e.error == "temporarily_unavailable" || e.error == "server_error" {
        Page::error(
            S::SERVICE_UNAVAILABLE,
            "Microsoft is temporarily unavailable",
            "Microsoft's sign-in service reported a temporary problem. Nothing was saved.",
            Some(TRY_AGAIN),
        )
    } else if e.error == "invalid_request"
        || e.error == "unauthorized_client"
        || e.error == "invalid_scope"
    {
        Page::error(
            S::BAD_REQUEST,
            "Microsoft refused the sign-in request",
            "The Microsoft app registration does not accept this request.",
            Some(ASK_ADMIN),
        )
    } else {
        Page::error(
            S::BAD_REQUEST,
            "Microsoft did not complete the sign-in",
            "Microsoft ended the sign-in with an error. Nothing was connected.",
            Some(START_AGAIN),
        )
    };
    page.with_reference(Some(reference(e)))
}

/// Pages for Microsoft's refusals of a connection's own app: the app's owner acts, not the
/// deployment's operator.
fn own_app_page(client_id: &str, e: &MicrosoftError, ctx: &PageContext) -> Page {
    use StatusCode as S;
    let code = |c: u32| e.has_code(c);
    let app = format!("the app registration {client_id}");
    let page = if code(50011) {
        Page::error(
            S::BAD_REQUEST,
            "The connection's app does not list this redirect URI",
            &format!(
                "Microsoft refused to return to {}: {app} does not list it.",
                ctx.redirect_uri
            ),
            Some(&format!(
                "The owner of {app} must add {} exactly, as a \"Web\" redirect URI, then start again.",
                ctx.redirect_uri
            )),
        )
    } else if code(700_016) || e.error == "unauthorized_client" {
        Page::error(
            S::BAD_REQUEST,
            "The connection's Microsoft app was not found",
            &format!("Microsoft does not know {app} in the tenant the connection names."),
            Some(
                "Check the connection's client id and tenant: the app must be registered in that tenant, or be multi-tenant.",
            ),
        )
    } else if code(50194) {
        Page::error(
            S::BAD_REQUEST,
            "The connection's app is single-tenant",
            &format!(
                "{app} accepts accounts of one directory only, but the connection's tenant is not that directory."
            ),
            Some(
                "Set the connection's tenant to the app's Directory (tenant) ID, then start again.",
            ),
        )
    } else if e.class() == crate::microsoft::FailureClass::AppMisconfigured {
        Page::error(
            S::BAD_GATEWAY,
            "The connection's app credential was refused",
            &format!(
                "Microsoft rejected the client secret or certificate of {app}; it may have expired. Nothing was saved."
            ),
            Some(
                "The app's owner must create a new client secret or certificate in Microsoft Entra ID and set it on the connection again.",
            ),
        )
    } else {
        return microsoft_page(e, ctx);
    };
    page.with_reference(Some(reference(e)))
}

/// A short, safe reference for support: the error, AADSTS codes, and Microsoft's trace id.
fn reference(e: &MicrosoftError) -> String {
    let mut out = e
        .error
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect::<String>();
    for code in e.error_codes.iter().take(3) {
        let _ = write!(out, " AADSTS{code}");
    }
    if let Some(trace) = &e.trace_id {
        let _ = write!(out, " trace {}", trace.chars().take(64).collect::<String>());
    }
    out
}

/// `error: cause: cause…` for one log line.
pub fn chain(error: &dyn StdError) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(out, ": {cause}");
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> PageContext {
        PageContext {
            redirect_uri: "https://api.example.com/oauth/redirect/microsoft".into(),
            sign_in_url: Some("https://app.example.com/".into()),
        }
    }

    fn ms(error: &str, codes: &[u32]) -> FlowError {
        FlowError::Microsoft(Box::new(MicrosoftError {
            error: error.into(),
            error_description: None,
            error_codes: codes.to_vec(),
            trace_id: Some("trace-1".into()),
            correlation_id: None,
        }))
    }

    #[test]
    fn each_microsoft_error_gets_its_own_advice() {
        let cases: &[(FlowError, u16, &str)] = &[
            (ms("access_denied", &[65004]), 403, "declined"),
            (ms("invalid_request", &[50011]), 400, "redirect URI"),
            (ms("invalid_request", &[50194]), 400, "single-tenant"),
            (ms("unauthorized_client", &[700_016]), 400, "not found"),
            (ms("invalid_client", &[7_000_222]), 502, "credentials"),
            (ms("consent_required", &[65001]), 403, "administrator must approve"),
            (ms("invalid_grant", &[70008]), 400, "no longer"),
            (ms("invalid_grant", &[54005]), 400, "no longer"),
            (ms("temporarily_unavailable", &[]), 503, "temporarily"),
            (ms("interaction_required", &[53003]), 403, "policy"),
        ];
        for (error, status, words) in cases {
            let page = error.page(&ctx());
            assert_eq!(page.status.as_u16(), *status, "{error}");
            assert!(page.title.contains(words), "{error}: {}", page.title);
        }
    }

    #[test]
    fn the_redirect_uri_hint_names_the_exact_uri() {
        let page = ms("invalid_request", &[50011]).page(&ctx());
        assert!(page.render().contains("https://api.example.com/oauth/redirect/microsoft"));
    }

    #[test]
    fn references_hold_codes_and_trace_only() {
        let page = ms("invalid_grant", &[70008]).page(&ctx());
        assert_eq!(page.reference.as_deref(), Some("invalid_grant AADSTS70008 trace trace-1"));
    }

    #[test]
    fn autokitteh_problems_say_what_to_do() {
        let rpc = |status, code: &str| {
            FlowError::AutoKitteh(AkError::Rpc { status, code: code.into(), message: "m".into() })
        };
        let cases: &[(FlowError, u16, &str)] = &[
            (FlowError::AkSignedOut, 401, "Sign in to AutoKitteh"),
            (
                FlowError::AutoKitteh(AkError::Unauthenticated("invalid token".into())),
                401,
                "not valid",
            ),
            (FlowError::AkConnectionNotFound, 404, "not found"),
            (FlowError::AkWrongIntegration("int_x".into()), 400, "not a Microsoft"),
            (FlowError::AkOtherUser, 403, "who started"),
            (rpc(403, "permission_denied"), 403, "did not let you"),
            (rpc(500, "unknown"), 503, "not responding"),
            (rpc(400, "invalid_argument"), 502, "unexpected"),
            (FlowError::AkLimit(VarLimit::TooMany { count: 70 }), 502, "too large"),
        ];
        for (error, status, words) in cases {
            let page = error.page(&ctx());
            assert_eq!(page.status.as_u16(), *status, "{error}");
            assert!(page.title.contains(words), "{error}: {}", page.title);
        }
        let html = FlowError::AkSignedOut.page(&ctx()).render();
        assert!(html.contains(r#"<a href="https://app.example.com/">Open AutoKitteh</a>"#));
    }

    #[test]
    fn server_faults_are_opaque() {
        let e = FlowError::Store(StoreError::Unavailable {
            operation: "PutItem",
            source: "connection refused to 10.0.0.1".into(),
        });
        let page = e.page(&ctx());
        assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!page.render().contains("10.0.0.1"));
        assert!(chain(&e).contains("connection refused"));
    }
}
