//! The proxy's pure rules: where a request goes upstream, what of the
//! client's request is stripped (every credential it sent, hop-by-hop
//! headers) and what is added (the daemon's current credential, the API's
//! `Host`). No I/O here; unit-tested.
//!
//! How the API reads credentials (see shared/voipbin-api.md): a token from
//! the `token` cookie, then `?token=`, then `Authorization: Bearer`; else
//! an access key from the `accesskey` cookie, then `?accesskey=`. A key
//! request must carry no token at all, so every one of those places is
//! cleared before the daemon's credential is added.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Uri};
use url::Url;

use crate::secret::Secret;

/// Why a request is not forwarded: the proxy is not an open proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// CONNECT: no tunnels (405).
    Connect,
    /// An absolute-form target naming another host or port than the API's (400).
    OtherHost,
    /// A target that is not a path (an authority or `*`), or unusable (400).
    BadTarget,
}

impl Refused {
    pub fn status(&self) -> u16 {
        match self {
            Refused::Connect => 405,
            Refused::OtherHost | Refused::BadTarget => 400,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Refused::Connect => "CONNECT is not allowed: this proxy only reaches the VoIPBIN API",
            Refused::OtherHost => {
                "this proxy only reaches the VoIPBIN API; the target names another host or port"
            }
            Refused::BadTarget => "the request target must be a path",
        }
    }
}

/// The credential added to a request.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// A login token: `Authorization: Bearer`.
    Token(&'a Secret),
    /// An access key: the `accesskey` cookie.
    Key(&'a Secret),
}

/// The query parameters that carry a credential: removed.
const CREDENTIAL_PARAMS: [&str; 2] = ["token", "accesskey"];
/// The cookies that carry a credential: removed.
const CREDENTIAL_COOKIES: [&str; 2] = ["token", "accesskey"];

/// Headers of one hop only (RFC 9110 section 7.6.1), never forwarded
/// either way; plus the credentials a client may send the proxy itself.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Where a request goes: its path under the base URL's path, and its
/// query without credentials, as the path-and-query of the upstream
/// request (`/v1.0/calls?page_size=10`). `method` and `target` are the
/// request's.
pub fn upstream_path(base: &Url, method: &Method, target: &Uri) -> Result<String, Refused> {
    if method == Method::CONNECT {
        return Err(Refused::Connect);
    }
    if let Some(authority) = target.authority() {
        // Absolute-form: only the API's own host and port (as a client
        // configured with the API's URL and this proxy as its HTTP proxy
        // would send). Another port on the same host is another service
        // (a loopback API's neighbours); the default port of either scheme
        // counts as the API's when the API is on its scheme's default too.
        let same_host = base.host_str().is_some_and(|h| {
            h.eq_ignore_ascii_case(authority.host().trim_start_matches('[').trim_end_matches(']'))
        });
        let same_port = match authority.port_u16() {
            Some(port) => base.port_or_known_default() == Some(port),
            None => base.port().is_none(),
        };
        if !(same_host && same_port) {
            return Err(Refused::OtherHost);
        }
    }
    let path = target.path();
    if !path.starts_with('/') {
        return Err(Refused::BadTarget);
    }
    let prefix = base.path().trim_end_matches('/');
    let mut out =
        String::with_capacity(prefix.len() + path.len() + target.query().map_or(0, |q| q.len() + 1));
    out.push_str(prefix);
    out.push_str(path);
    if let Some(query) = target.query() {
        let kept = strip_query(query);
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept);
        }
    }
    Ok(out)
}

/// The query without `token` and `accesskey` parameters (in any spelling
/// that decodes to those names), the others byte for byte.
pub fn strip_query(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            let decoded: String = url::form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            !pair.is_empty() && !CREDENTIAL_PARAMS.contains(&decoded.as_str())
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The request headers as forwarded: hop-by-hop headers (and those the
/// `Connection` header names), `Authorization`, `Host` and the credential
/// cookies removed; the API's `Host` and `credential` added.
pub fn request_headers(incoming: &HeaderMap, api: &Url, credential: Credential<'_>) -> HeaderMap {
    let mut out = forwardable(incoming);
    out.remove(header::AUTHORIZATION);
    out.remove(header::HOST);
    let cookies: Vec<String> = incoming
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| {
            let name = c.split('=').next().unwrap_or("").trim();
            !CREDENTIAL_COOKIES.contains(&name)
        })
        .map(str::to_string)
        .collect();
    out.remove(header::COOKIE);
    let mut cookie = cookies.join("; ");
    match credential {
        Credential::Token(token) => {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
                v.set_sensitive(true);
                out.insert(header::AUTHORIZATION, v);
            }
        }
        Credential::Key(key) => {
            if !cookie.is_empty() {
                cookie.push_str("; ");
            }
            cookie.push_str("accesskey=");
            cookie.push_str(key.expose());
        }
    }
    if !cookie.is_empty()
        && let Ok(mut v) = HeaderValue::from_str(&cookie)
    {
        v.set_sensitive(true);
        out.insert(header::COOKIE, v);
    }
    if let Some(host) = api_host(api)
        && let Ok(v) = HeaderValue::from_str(&host)
    {
        out.insert(header::HOST, v);
    }
    // An upgrade keeps the two hop-by-hop headers that ask for it.
    if is_upgrade(incoming)
        && let Some(upgrade) = incoming.get(header::UPGRADE)
    {
        out.insert(header::UPGRADE, upgrade.clone());
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    out
}

/// A request to switch protocols (a WebSocket): `Connection: upgrade`
/// and an `Upgrade` header.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The response headers as passed back: hop-by-hop headers removed.
pub fn response_headers(incoming: &HeaderMap) -> HeaderMap {
    forwardable(incoming)
}

/// `incoming` without hop-by-hop headers and those `Connection` names.
fn forwardable(incoming: &HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = incoming
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let mut out = incoming.clone();
    for name in HOP_BY_HOP {
        out.remove(name);
    }
    for name in named {
        out.remove(name);
    }
    out
}

/// `host[:port]` as the API expects it in `Host` (the port only when it is
/// not the scheme's default).
fn api_host(api: &Url) -> Option<String> {
    let host = api.host_str()?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Some(match api.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        "https://api.voipbin.net".parse().unwrap()
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn the_path_goes_under_the_base_path_and_credentials_leave_the_query() {
        let u = upstream_path(
            &base(),
            &Method::GET,
            &uri("/v1.0/calls?page_size=10&accesskey=vb_x&token=ey"),
        )
        .unwrap();
        assert_eq!(u, "/v1.0/calls?page_size=10");
        let with_path: Url = "http://127.0.0.1:9000/api/".parse().unwrap();
        let u = upstream_path(&with_path, &Method::POST, &uri("/v1.0/calls")).unwrap();
        assert_eq!(u, "/api/v1.0/calls");
        // Encoded names are credentials too; other parameters stay byte for byte.
        assert_eq!(strip_query("acc%65sskey=vb_x&a=%20b&&TOKEN=x"), "a=%20b&TOKEN=x");
        assert_eq!(strip_query("token"), "");
    }

    #[test]
    fn connect_and_other_hosts_are_refused_but_the_apis_own_absolute_form_is_not() {
        assert_eq!(
            upstream_path(&base(), &Method::CONNECT, &uri("api.voipbin.net:443")),
            Err(Refused::Connect)
        );
        assert_eq!(
            upstream_path(&base(), &Method::GET, &uri("http://evil.example/v1.0/calls")),
            Err(Refused::OtherHost)
        );
        assert_eq!(
            upstream_path(&base(), &Method::GET, &uri("*")),
            Err(Refused::BadTarget)
        );
        let u = upstream_path(&base(), &Method::GET, &uri("https://API.voipbin.net/v1.0/me")).unwrap();
        assert_eq!(u, "/v1.0/me");
        let u = upstream_path(&base(), &Method::GET, &uri("https://api.voipbin.net:443/v1.0/me")).unwrap();
        assert_eq!(u, "/v1.0/me");
        // Another port of the API's host is another service.
        assert_eq!(
            upstream_path(&base(), &Method::GET, &uri("http://api.voipbin.net:8080/v1.0/me")),
            Err(Refused::OtherHost)
        );
        let local: Url = "http://127.0.0.1:9000/".parse().unwrap();
        for other in ["http://127.0.0.1:9001/v1.0/me", "http://127.0.0.1/v1.0/me"] {
            assert_eq!(
                upstream_path(&local, &Method::GET, &uri(other)),
                Err(Refused::OtherHost),
                "{other}"
            );
        }
        let u = upstream_path(&local, &Method::GET, &uri("http://127.0.0.1:9000/v1.0/me")).unwrap();
        assert_eq!(u, "/v1.0/me");
    }

    #[test]
    fn every_client_credential_is_stripped_and_the_daemons_added() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer client-token".parse().unwrap());
        h.append(
            header::COOKIE,
            "a=1; token=client; accesskey=vb_client".parse().unwrap(),
        );
        h.append(header::COOKIE, "b=2".parse().unwrap());
        h.insert(header::HOST, "127.0.0.1:8787".parse().unwrap());
        h.insert(header::CONNECTION, "keep-alive, x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        let key = Secret::new("vb_daemonkey".into());
        let out = request_headers(&h, &base(), Credential::Key(&key));
        assert!(out.get(header::AUTHORIZATION).is_none());
        assert_eq!(
            out.get(header::COOKIE).unwrap(),
            "a=1; b=2; accesskey=vb_daemonkey"
        );
        assert_eq!(out.get(header::HOST).unwrap(), "api.voipbin.net");
        assert!(out.get("x-hop").is_none() && out.get(header::CONNECTION).is_none());
        assert!(out.get("proxy-authorization").is_none());
        assert_eq!(out.get("x-kept").unwrap(), "yes");
        let token = Secret::new("ey.daemon.token".into());
        let local: Url = "http://127.0.0.1:9000".parse().unwrap();
        let out = request_headers(&h, &local, Credential::Token(&token));
        assert_eq!(out.get(header::AUTHORIZATION).unwrap(), "Bearer ey.daemon.token");
        assert!(out.get(header::AUTHORIZATION).unwrap().is_sensitive());
        assert_eq!(out.get(header::COOKIE).unwrap(), "a=1; b=2");
        assert_eq!(out.get(header::HOST).unwrap(), "127.0.0.1:9000");
    }

    #[test]
    fn a_request_with_no_other_cookie_gets_only_the_key_cookie() {
        let key = Secret::new("vb_daemonkey".into());
        let out = request_headers(&HeaderMap::new(), &base(), Credential::Key(&key));
        assert_eq!(out.get(header::COOKIE).unwrap(), "accesskey=vb_daemonkey");
        let token = Secret::new("ey.t.s".into());
        let out = request_headers(&HeaderMap::new(), &base(), Credential::Token(&token));
        assert!(out.get(header::COOKIE).is_none());
    }
}
