//! AWS Signature Version 4: signing upstream Bedrock calls, and verifying the
//! signatures of Bedrock clients (boto3 and the other AWS SDKs) that call tollgate.
//!
//! HMAC-SHA256 comes from `ring` (already compiled in for TLS) and SHA-256 from `sha2`;
//! no AWS SDK crate is involved. The canonical request follows the SigV4 rules for
//! services other than S3: the path is URI-encoded once more on top of how it travels
//! (so `modelId` `a:b` appears as `a%3Ab` on the wire and `a%253Ab` when signed), query
//! pairs are decoded, re-encoded and sorted, and header values are trimmed with inner
//! runs of spaces collapsed.

use http::HeaderMap;
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a client's clock may be from ours (AWS allows 15 minutes).
pub const MAX_SKEW_SECS: i64 = 15 * 60;

/// Credentials to sign with.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("Authorization header is malformed: {0}")]
    Malformed(String),
    #[error(
        "Signature expired: the request time {0} is more than 15 minutes away from the server time."
    )]
    Expired(String),
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."
    )]
    Mismatch,
}

/// `Authorization: AWS4-HMAC-SHA256 Credential=.../date/region/service/aws4_request,
/// SignedHeaders=a;b;c, Signature=hex`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// Percent-encode everything but the unreserved characters (and `/` when `keep_slash`).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (
                (bytes[i + 1] as char).to_digit(16),
                (bytes[i + 2] as char).to_digit(16),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The canonical query string of a raw query (`a=1&b=x%20y`).
pub fn canonical_query(raw: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn canonical_header_value(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(",")
}

/// The string to sign and the canonical request it hashes.
fn string_to_sign(
    method: &str,
    canonical_uri: &str,
    query: &str,
    headers: &[(String, String)],
    payload_hash: &str,
    amz_date: &str,
    scope: &str,
) -> String {
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{query}\n{canonical_headers}\n{}\n{payload_hash}",
        signed.join(";")
    );
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac_sha256(&k, region.as_bytes());
    let k = hmac_sha256(&k, service.as_bytes());
    hmac_sha256(&k, b"aws4_request")
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time.
pub fn amz_date(unix_secs: i64) -> String {
    let (y, m, d) = civil_from_days(unix_secs.div_euclid(86_400));
    let s = unix_secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// The Unix time of a `YYYYMMDDTHHMMSSZ` timestamp.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Sign an upstream request: adds `x-amz-date`, `x-amz-security-token` (with a session
/// token) and `authorization` to `headers`. `host` is the `Host` header the client will
/// send (with the port when it is not the scheme's default); `path` is the request path
/// as it goes on the wire (already percent-encoded once).
#[allow(clippy::too_many_arguments)]
pub fn sign(
    method: &str,
    host: &str,
    path: &str,
    query: &str,
    headers: &mut HeaderMap,
    body: &[u8],
    creds: &Credentials,
    region: &str,
    service: &str,
    unix_secs: i64,
) {
    let date_time = amz_date(unix_secs);
    let date = &date_time[..8];
    let mut set = |name: &'static str, value: &str, sensitive: bool| {
        if let Ok(mut v) = http::HeaderValue::from_str(value) {
            v.set_sensitive(sensitive);
            headers.insert(name, v);
        }
    };
    set("x-amz-date", &date_time, false);
    if let Some(t) = &creds.session_token {
        set("x-amz-security-token", t.expose_secret(), true);
    }
    let mut signed: Vec<(String, String)> = vec![("host".into(), host.to_string())];
    for name in ["content-type", "x-amz-date", "x-amz-security-token"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            signed.push((name.into(), canonical_header_value(&[v])));
        }
    }
    // Attribution headers are signed too (botocore signs every header a client adds),
    // so a gateway that ignores unsigned ones still sees them.
    for name in headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-tollgate-"))
    {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        signed.push((name.as_str().into(), canonical_header_value(&values)));
    }
    signed.sort();
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = string_to_sign(
        method,
        &uri_encode(path, true),
        &canonical_query(query),
        &signed,
        &sha256_hex(body),
        &date_time,
        &scope,
    );
    let sig = hex::encode(hmac_sha256(
        &signing_key(
            creds.secret_access_key.expose_secret(),
            date,
            region,
            service,
        ),
        sts.as_bytes(),
    ));
    let names: Vec<&str> = signed.iter().map(|(k, _)| k.as_str()).collect();
    let auth = format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
        creds.access_key_id,
        names.join(";")
    );
    if let Ok(mut v) = http::HeaderValue::from_str(&auth) {
        v.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, v);
    }
}

/// Parse a SigV4 `Authorization` header value.
pub fn parse_authorization(value: &str) -> Result<AuthHeader, SigV4Error> {
    let rest = value
        .trim()
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| SigV4Error::Malformed(format!("the algorithm must be {ALGORITHM}")))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let missing = |what: &str| SigV4Error::Malformed(format!("missing {what}"));
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, "aws4_request"] = parts[..] else {
        return Err(SigV4Error::Malformed(
            "Credential must be <key id>/<date>/<region>/<service>/aws4_request".into(),
        ));
    };
    if akid.is_empty() || date.len() != 8 || signature.len() != 64 {
        return Err(SigV4Error::Malformed("bad Credential or Signature".into()));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_ascii_lowercase).collect();
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(SigV4Error::Malformed(
            "the host header must be signed".into(),
        ));
    }
    Ok(AuthHeader {
        access_key_id: akid.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// A request as received, to verify.
pub struct Received<'a> {
    pub method: &'a str,
    /// The path exactly as it came on the wire (percent-encoded).
    pub raw_path: &'a str,
    pub raw_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The service a Bedrock client signs for (`bedrock-runtime`'s signing name).
pub const SERVICE: &str = "bedrock";

/// What can be checked from the headers alone, before the body is read: the credential
/// scope names the `bedrock` service, `x-amz-date` is within [`MAX_SKEW_SECS`] of
/// `now_unix` and on the credential's date. Returns `x-amz-date`.
pub fn check_scope<'h>(
    auth: &AuthHeader,
    headers: &'h HeaderMap,
    now_unix: i64,
) -> Result<&'h str, SigV4Error> {
    if auth.service != SERVICE {
        return Err(SigV4Error::Malformed(format!(
            "the Credential scope's service must be {SERVICE}, not {:?}",
            auth.service
        )));
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SigV4Error::Malformed("missing x-amz-date".into()))?;
    let t = parse_amz_date(amz_date)
        .ok_or_else(|| SigV4Error::Malformed("x-amz-date is not YYYYMMDDTHHMMSSZ".into()))?;
    if (now_unix - t).abs() > MAX_SKEW_SECS {
        return Err(SigV4Error::Expired(amz_date.to_string()));
    }
    if !amz_date.starts_with(&auth.date) {
        return Err(SigV4Error::Malformed(
            "the Credential date does not match x-amz-date".into(),
        ));
    }
    Ok(amz_date)
}

/// Check a request's signature against `secret` at time `now_unix` (the scope and date
/// included: [`check_scope`]).
pub fn verify(
    auth: &AuthHeader,
    secret: &str,
    req: &Received<'_>,
    now_unix: i64,
) -> Result<(), SigV4Error> {
    let amz_date = check_scope(auth, req.headers, now_unix)?;
    let mut signed = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let values: Vec<&str> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            return Err(SigV4Error::Malformed(format!(
                "signed header {name} is missing"
            )));
        }
        signed.push((name.clone(), canonical_header_value(&values)));
    }
    let body_hash = sha256_hex(req.body);
    if let Some(claimed) = req
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        && claimed != body_hash
    {
        return Err(SigV4Error::Mismatch);
    }
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let sts = string_to_sign(
        req.method,
        &uri_encode(req.raw_path, true),
        &canonical_query(req.raw_query),
        &signed,
        &body_hash,
        amz_date,
        &scope,
    );
    let expected = hex::encode(hmac_sha256(
        &signing_key(secret, &auth.date, &auth.region, &auth.service),
        sts.as_bytes(),
    ));
    let diff = expected
        .bytes()
        .zip(auth.signature.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff == 0 && expected.len() == auth.signature.len() {
        Ok(())
    } else {
        Err(SigV4Error::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
    }

    #[test]
    fn dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("2015-08-30"), None);
        for t in [0i64, 951_782_400, 1_709_164_800, 4_102_444_799] {
            assert_eq!(parse_amz_date(&amz_date(t)), Some(t));
        }
    }

    #[test]
    fn aws_suite_get_vanilla() {
        // "get-vanilla" from the AWS SigV4 test suite: GET / on example.amazonaws.com,
        // service "service", region us-east-1, 2015-08-30T12:36:00Z.
        let mut h = HeaderMap::new();
        sign(
            "GET",
            "example.amazonaws.com",
            "/",
            "",
            &mut h,
            b"",
            &creds(),
            "us-east-1",
            "service",
            1_440_938_160,
        );
        assert_eq!(
            h["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn aws_suite_post_x_www_form_urlencoded() {
        // "post-x-www-form-urlencoded": signs content-type and the body's hash.
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        sign(
            "POST",
            "example.amazonaws.com",
            "/",
            "",
            &mut h,
            b"Param1=value1",
            &creds(),
            "us-east-1",
            "service",
            1_440_938_160,
        );
        assert_eq!(
            h["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        );
    }

    fn signed_request(path: &str, body: &[u8], t: i64) -> (HeaderMap, AuthHeader) {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("host", "127.0.0.1:4000".parse().unwrap());
        sign(
            "POST",
            "127.0.0.1:4000",
            path,
            "",
            &mut h,
            body,
            &creds(),
            "us-west-2",
            "bedrock",
            t,
        );
        let auth = parse_authorization(h["authorization"].to_str().unwrap()).unwrap();
        (h, auth)
    }

    #[test]
    fn verify_accepts_its_own_signature_and_rejects_tampering() {
        let t = 1_760_000_000;
        let path = "/model/us.amazon.nova-2-lite-v1%3A0/converse";
        let body = br#"{"messages":[]}"#;
        let (h, auth) = signed_request(path, body, t);
        assert_eq!(auth.access_key_id, "AKIDEXAMPLE");
        assert_eq!(auth.service, "bedrock");
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let req = |body: &'static [u8], path: &'static str| Received {
            method: "POST",
            raw_path: path,
            raw_query: "",
            headers: &h,
            body,
        };
        assert_eq!(verify(&auth, secret, &req(body, path), t + 60), Ok(()));
        assert_eq!(
            verify(&auth, "wrong", &req(body, path), t),
            Err(SigV4Error::Mismatch)
        );
        assert_eq!(
            verify(&auth, secret, &req(br#"{"messages":[1]}"#, path), t),
            Err(SigV4Error::Mismatch)
        );
        assert_eq!(
            verify(&auth, secret, &req(body, "/model/other/converse"), t),
            Err(SigV4Error::Mismatch)
        );
        assert!(matches!(
            verify(&auth, secret, &req(body, path), t + MAX_SKEW_SECS + 1),
            Err(SigV4Error::Expired(_))
        ));
    }

    /// A signature made for another service (here `s3`, a valid signature with the
    /// right secret) does not authenticate a Bedrock call.
    #[test]
    fn the_scope_must_name_bedrock() {
        let t = 1_760_000_000;
        let path = "/model/m/converse";
        let body = b"{}";
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:4000".parse().unwrap());
        sign(
            "POST",
            "127.0.0.1:4000",
            path,
            "",
            &mut h,
            body,
            &creds(),
            "us-west-2",
            "s3",
            t,
        );
        let auth = parse_authorization(h["authorization"].to_str().unwrap()).unwrap();
        let req = Received {
            method: "POST",
            raw_path: path,
            raw_query: "",
            headers: &h,
            body,
        };
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let e = verify(&auth, secret, &req, t).unwrap_err();
        assert!(
            matches!(&e, SigV4Error::Malformed(m) if m.contains("bedrock")),
            "{e:?}"
        );
        assert!(check_scope(&auth, &h, t).is_err());
        let (h2, auth2) = signed_request(path, body, t);
        assert!(check_scope(&auth2, &h2, t).is_ok());
    }

    #[test]
    fn parses_and_rejects_headers() {
        assert!(parse_authorization("Bearer x").is_err());
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=a/b").is_err());
        assert_eq!(canonical_query("b=2&a=x%20y&c"), "a=x%20y&b=2&c=");
        assert_eq!(
            uri_encode("/model/a%3Ab/converse", true),
            "/model/a%253Ab/converse"
        );
    }
}
