//! A small SigV4-signed HTTP client for the few EC2, S3 and SNS calls valkey-dr makes.
//!
//! `aws-sdk-ec2` and `aws-sdk-s3` take minutes to compile for three operations; this reuses the
//! signer, credentials chain, TLS and XML reader the SDK crates we do use already build.
//! Credentials, region and endpoint overrides come from the same standard configuration
//! (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_EC2`, `_S3`, `_SNS`, profiles).
//!
//! Like the SDK, it retries what AWS says to retry (throttling, 5xx, a dropped connection) with
//! exponential backoff, and corrects its signing clock from the server's `Date` when AWS says the
//! request's time is too far off.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum SignedError {
    #[error("no AWS credentials: {0}")]
    Credentials(String),
    #[error("{service} request could not be built: {reason}")]
    Request {
        service: &'static str,
        reason: String,
    },
    #[error("{service} at {endpoint} unreachable: {reason}")]
    Transport {
        service: &'static str,
        endpoint: String,
        reason: String,
    },
    /// The service answered with an error; `code` is AWS's error code (`InvalidVpcPeeringConnectionID.NotFound`).
    #[error("{service}: {code}: {message}")]
    Api {
        service: &'static str,
        status: u16,
        code: String,
        message: String,
    },
}

impl SignedError {
    pub fn code(&self) -> Option<&str> {
        match self {
            SignedError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Which service a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Ec2,
    S3,
    Sns,
}

/// What differs between the services: one row each.
struct ServiceInfo {
    signing_name: &'static str,
    label: &'static str,
    endpoint_env: &'static str,
    /// The Query API version (the S3 REST API has none).
    query_version: &'static str,
}

impl Service {
    fn info(self) -> ServiceInfo {
        let (signing_name, label, endpoint_env, query_version) = match self {
            Service::Ec2 => ("ec2", "EC2", "AWS_ENDPOINT_URL_EC2", "2016-11-15"),
            Service::S3 => ("s3", "S3", "AWS_ENDPOINT_URL_S3", ""),
            Service::Sns => ("sns", "SNS", "AWS_ENDPOINT_URL_SNS", "2010-03-31"),
        };
        ServiceInfo {
            signing_name,
            label,
            endpoint_env,
            query_version,
        }
    }
}

#[derive(Clone)]
pub struct SignedClient {
    sdk: aws_config::SdkConfig,
    http: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<bytes::Bytes>>,
    /// How long a request without a body may take; a body adds time at [`UPLOAD_RATE`].
    timeout: Duration,
    /// First delay between attempts (doubles each time).
    retry_base: Duration,
    /// The server's clock minus ours, in milliseconds, learnt from a skew error.
    clock_offset_ms: Arc<AtomicI64>,
}

/// One request, as its attempts repeat it.
struct Call<'a> {
    service: Service,
    region: &'a str,
    method: &'a str,
    url: &'a str,
    headers: &'a [(&'a str, String)],
}

/// Attempts per request, the first included.
const ATTEMPTS: u32 = 5;
/// The slowest upload a request's timeout allows for (bytes per second).
const UPLOAD_RATE: u64 = 256 * 1024;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not retryable: the answer stands.
    No,
    /// Throttling, a server error or a lost connection: wait, then try again.
    Backoff,
    /// The request's time was too far from the server's: correct the clock and try again now.
    ClockSkew,
}

/// How AWS's answer should be handled (the SDK's classification, for the codes these services
/// send).
pub fn classify(error: &SignedError) -> Retry {
    const THROTTLING: [&str; 8] = [
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "PriorRequestNotComplete",
    ];
    const SKEW: [&str; 3] = [
        "RequestTimeTooSkewed",
        "RequestExpired",
        "RequestInTheFuture",
    ];
    match error {
        SignedError::Api { code, message, .. }
            if SKEW.contains(&code.as_str())
                || (matches!(
                    code.as_str(),
                    "InvalidSignatureException" | "SignatureDoesNotMatch"
                ) && message.contains("expired")) =>
        {
            Retry::ClockSkew
        }
        SignedError::Api { code, status, .. }
            if THROTTLING.contains(&code.as_str()) || matches!(status, 500 | 502 | 503 | 504) =>
        {
            Retry::Backoff
        }
        SignedError::Transport { .. } => Retry::Backoff,
        _ => Retry::No,
    }
}

/// The DNS suffix of AWS's endpoints in `region`'s partition.
pub fn dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else if region.starts_with("us-isob-") {
        "sc2s.sgov.gov"
    } else if region.starts_with("us-iso-") {
        "c2s.ic.gov"
    } else {
        "amazonaws.com"
    }
}

impl SignedClient {
    pub fn new(sdk: &aws_config::SdkConfig) -> Result<SignedClient, SignedError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .map_err(|e| SignedError::Request {
                service: "TLS",
                reason: format!("no usable root certificates: {e}"),
            })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(SignedClient {
            sdk: sdk.clone(),
            http: HyperClient::builder(TokioExecutor::new()).build(https),
            timeout: Duration::from_secs(30),
            retry_base: Duration::from_millis(200),
            clock_offset_ms: Arc::new(AtomicI64::new(0)),
        })
    }

    /// Shorter waits between attempts and per request (tests).
    pub fn with_timing(mut self, retry_base: Duration, timeout: Duration) -> SignedClient {
        self.retry_base = retry_base;
        self.timeout = timeout;
        self
    }

    /// Our clock corrected by what the server told us.
    fn now(&self) -> SystemTime {
        let offset = self.clock_offset_ms.load(Ordering::Relaxed);
        let magnitude = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 {
            SystemTime::now() + magnitude
        } else {
            SystemTime::now() - magnitude
        }
    }

    /// The endpoint override from the environment or profile, if any (S3 then uses path-style
    /// URLs).
    pub fn endpoint_override(&self, service: Service) -> Option<String> {
        std::env::var(service.info().endpoint_env)
            .ok()
            .or_else(|| self.sdk.endpoint_url().map(str::to_string))
            .map(|e| e.trim_end_matches('/').to_string())
    }

    /// The endpoint for `service` in `region`: the override, else AWS's in the region's partition.
    pub fn endpoint(&self, service: Service, region: &str) -> String {
        self.endpoint_override(service).unwrap_or_else(|| {
            format!(
                "https://{}.{region}.{}",
                service.info().signing_name,
                dns_suffix(region)
            )
        })
    }

    /// Sends one signed request and returns the answer's body; a non-2xx answer becomes
    /// [`SignedError::Api`] with AWS's code. Retried as [`classify`] says, up to [`ATTEMPTS`].
    pub async fn send(
        &self,
        service: Service,
        region: &str,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Vec<u8>, SignedError> {
        let body = bytes::Bytes::from(body);
        let call = Call {
            service,
            region,
            method,
            url,
            headers,
        };
        let mut backoff = valkey_dr_core::Backoff::new(self.retry_base, Duration::from_secs(20));
        let mut attempt = 1;
        loop {
            let (error, server_date) = match self.send_once(&call, body.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(failure) => failure,
            };
            let retry = classify(&error);
            if retry == Retry::No || attempt >= ATTEMPTS {
                return Err(error);
            }
            attempt += 1;
            match (retry, server_date) {
                (Retry::ClockSkew, Some(server)) => {
                    let offset = match server.duration_since(SystemTime::now()) {
                        Ok(ahead) => ahead.as_millis() as i64,
                        Err(behind) => -(behind.duration().as_millis() as i64),
                    };
                    tracing::warn!(offset_ms = offset, "{error}; correcting the signing clock");
                    self.clock_offset_ms.store(offset, Ordering::Relaxed);
                }
                _ => {
                    let delay = backoff.next_delay();
                    tracing::warn!(attempt, ?delay, "{error}; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One attempt; a failure comes with the server's `Date`, when it sent one.
    async fn send_once(
        &self,
        call: &Call<'_>,
        body: bytes::Bytes,
    ) -> Result<Vec<u8>, (SignedError, Option<SystemTime>)> {
        let &Call {
            service,
            region,
            method,
            url,
            headers,
        } = call;
        let failed = |error: SignedError| (error, None);
        let ServiceInfo {
            signing_name,
            label,
            ..
        } = service.info();
        let credentials = self
            .sdk
            .credentials_provider()
            .ok_or_else(|| {
                failed(SignedError::Credentials(
                    "no credentials provider configured".into(),
                ))
            })?
            .provide_credentials()
            .await
            .map_err(|e| failed(SignedError::Credentials(e.to_string())))?;
        let identity: Identity = credentials.into();
        let request_error = |reason: String| {
            failed(SignedError::Request {
                service: label,
                reason,
            })
        };
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(signing_name)
            .time(self.now())
            .settings(signing_settings(service))
            .build()
            .map_err(|e| request_error(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            method,
            url,
            headers.iter().map(|(n, v)| (*n, v.as_str())),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| request_error(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| request_error(e.to_string()))?
            .into_parts();
        let mut request = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        // An upload gets the time its size needs on a slow link, on top of the answer's.
        let timeout = self.timeout + Duration::from_secs(body.len() as u64 / UPLOAD_RATE);
        // Bytes is reference-counted: a retry does not copy a megabytes-large zip.
        let mut request = request
            .body(Full::new(body))
            .map_err(|e| request_error(e.to_string()))?;
        instructions.apply_to_request_http1x(&mut request);

        let transport = |reason: String| {
            failed(SignedError::Transport {
                service: label,
                endpoint: url.split('?').next().unwrap_or(url).to_string(),
                reason,
            })
        };
        let response = tokio::time::timeout(timeout, self.http.request(request))
            .await
            .map_err(|_| transport(format!("no answer within {timeout:?}")))?
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        let server_date = response
            .headers()
            .get(http::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok());
        let bucket_region = response
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|r| r.to_str().ok())
            .map(str::to_string);
        let body = tokio::time::timeout(self.timeout, response.into_body().collect())
            .await
            .map_err(|_| transport("body not received in time".into()))?
            .map_err(|e| transport(e.to_string()))?
            .to_bytes()
            .to_vec();
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body);
            let mut code = xml::first(&text, "Code").unwrap_or_else(|| format!("HTTP {status}"));
            let mut message = xml::first(&text, "Message").unwrap_or_default();
            // S3 answers a request for a bucket in another region with a redirect (a HEAD's has no
            // body at all) and names the bucket's region in a header: say that, not "HTTP 301".
            if let Some(elsewhere) =
                bucket_region.filter(|b| b != region && matches!(status, 301 | 307 | 400))
            {
                code = "PermanentRedirect".into();
                message = format!(
                    "the bucket is in {elsewhere}, not {region}: use a bucket in {region} (Lambda reads its code only from its own region)"
                );
            }
            return Err((
                SignedError::Api {
                    service: label,
                    status,
                    code,
                    message,
                },
                server_date,
            ));
        }
        Ok(body)
    }

    /// One Query API call (`Action=…&Version=…&…`, EC2 and SNS); returns the XML answer.
    pub async fn query(
        &self,
        service: Service,
        region: &str,
        action: &str,
        params: &[(impl AsRef<str>, impl AsRef<str>)],
    ) -> Result<String, SignedError> {
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", action);
            form.append_pair("Version", service.info().query_version);
            for (key, value) in params {
                form.append_pair(key.as_ref(), value.as_ref());
            }
            form.finish().into_bytes()
        };
        let url = format!("{}/", self.endpoint(service, region));
        let answer = self
            .send(
                service,
                region,
                "POST",
                &url,
                &[(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8".into(),
                )],
                body,
            )
            .await?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }
}

fn signing_settings(service: Service) -> SigningSettings {
    let mut settings = SigningSettings::default();
    if service == Service::S3 {
        // S3 requires the payload hash header and signs the path as given.
        settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = aws_sigv4::http_request::PercentEncodingMode::Single;
        settings.uri_path_normalization_mode =
            aws_sigv4::http_request::UriPathNormalizationMode::Disabled;
    }
    settings
}

/// Just enough XML reading for the answers we use: an element tree, searched by name.
pub mod xml {
    #[derive(Debug, Default, Clone)]
    pub struct Element {
        pub name: String,
        pub text: String,
        pub children: Vec<Element>,
    }

    impl Element {
        /// Parses a document; malformed input yields what was read before the error.
        pub fn parse(text: &str) -> Element {
            let mut stack = vec![Element::default()];
            for token in xmlparser::Tokenizer::from(text) {
                let Ok(token) = token else { break };
                match token {
                    xmlparser::Token::ElementStart { local, .. } => stack.push(Element {
                        name: local.to_string(),
                        ..Element::default()
                    }),
                    xmlparser::Token::ElementEnd { end, .. } => {
                        if matches!(end, xmlparser::ElementEnd::Open) {
                            continue;
                        }
                        if stack.len() > 1 {
                            let done = stack.pop().unwrap_or_default();
                            if let Some(parent) = stack.last_mut() {
                                parent.children.push(done);
                            }
                        }
                    }
                    xmlparser::Token::Text { text } | xmlparser::Token::Cdata { text, .. } => {
                        if let Some(current) = stack.last_mut() {
                            current.text.push_str(&unescape(text.as_str()));
                        }
                    }
                    _ => {}
                }
            }
            while stack.len() > 1 {
                let done = stack.pop().unwrap_or_default();
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(done);
                }
            }
            stack.pop().unwrap_or_default()
        }

        /// The direct child named `name`.
        pub fn child(&self, name: &str) -> Option<&Element> {
            self.children.iter().find(|c| c.name == name)
        }

        /// Follows direct children by name: `at(&["status", "code"])`.
        pub fn at(&self, path: &[&str]) -> Option<&Element> {
            path.iter().try_fold(self, |e, name| e.child(name))
        }

        /// The trimmed text at `path`, if present.
        pub fn text_at(&self, path: &[&str]) -> Option<String> {
            self.at(path).map(|e| e.text.trim().to_string())
        }

        /// Every element named `name` below this one, in document order.
        pub fn descendants<'a>(&'a self, name: &str) -> Vec<&'a Element> {
            let mut found = Vec::new();
            self.collect(name, &mut found);
            found
        }

        fn collect<'a>(&'a self, name: &str, found: &mut Vec<&'a Element>) {
            for child in &self.children {
                if child.name == name {
                    found.push(child);
                } else {
                    child.collect(name, found);
                }
            }
        }
    }

    /// The text of the first element named `name` anywhere in `text`.
    pub fn first(text: &str, name: &str) -> Option<String> {
        Element::parse(text)
            .descendants(name)
            .first()
            .map(|e| e.text.trim().to_string())
    }

    fn unescape(text: &str) -> String {
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reads_nested_sets_and_errors() {
            let answer = "<?xml version=\"1.0\"?><DescribeVpcPeeringConnectionsResponse><vpcPeeringConnectionSet>\
                <item><vpcPeeringConnectionId>pcx-1</vpcPeeringConnectionId><status><code>active</code></status>\
                <tagSet><item><key>a</key></item></tagSet></item>\
                <item><vpcPeeringConnectionId>pcx-2</vpcPeeringConnectionId></item>\
                </vpcPeeringConnectionSet></DescribeVpcPeeringConnectionsResponse>";
            let root = Element::parse(answer);
            let set = root.descendants("vpcPeeringConnectionSet");
            let items: Vec<_> = set[0].children.iter().collect();
            assert_eq!(items.len(), 2);
            assert_eq!(
                items[0].text_at(&["status", "code"]).as_deref(),
                Some("active")
            );
            assert_eq!(
                items[1].text_at(&["vpcPeeringConnectionId"]).as_deref(),
                Some("pcx-2")
            );
            let error = "<Response><Errors><Error><Code>InvalidVpcID.NotFound</Code><Message>a &amp; b</Message></Error></Errors></Response>";
            assert_eq!(
                first(error, "Code").as_deref(),
                Some("InvalidVpcID.NotFound")
            );
            assert_eq!(first(error, "Message").as_deref(), Some("a & b"));
            // Garbage is not a panic.
            assert!(first("<<<>>not xml", "Code").is_none());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, message: &str) -> SignedError {
        SignedError::Api {
            service: "EC2",
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn answers_are_classified_as_the_sdk_does() {
        let cases = [
            (api(400, "RequestLimitExceeded", ""), Retry::Backoff),
            (api(400, "Throttling", "Rate exceeded"), Retry::Backoff),
            (api(503, "SlowDown", ""), Retry::Backoff),
            (api(500, "InternalError", ""), Retry::Backoff),
            (api(503, "HTTP 503", ""), Retry::Backoff),
            (api(403, "RequestTimeTooSkewed", ""), Retry::ClockSkew),
            (
                api(400, "RequestExpired", "Request has expired."),
                Retry::ClockSkew,
            ),
            (
                api(
                    403,
                    "SignatureDoesNotMatch",
                    "Signature expired: 20261130T000000Z is now earlier than",
                ),
                Retry::ClockSkew,
            ),
            (
                api(
                    403,
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match",
                ),
                Retry::No,
            ),
            (
                api(400, "InvalidVpcPeeringConnectionID.NotFound", ""),
                Retry::No,
            ),
            (api(403, "AccessDenied", ""), Retry::No),
            (api(404, "HTTP 404", ""), Retry::No),
            (
                SignedError::Transport {
                    service: "S3",
                    endpoint: "x".into(),
                    reason: "connection reset".into(),
                },
                Retry::Backoff,
            ),
            (SignedError::Credentials("none".into()), Retry::No),
        ];
        for (error, expected) in cases {
            assert_eq!(classify(&error), expected, "{error}");
        }
    }

    #[test]
    fn endpoints_follow_the_regions_partition() {
        for (region, suffix) in [
            ("us-east-2", "amazonaws.com"),
            ("eu-west-1", "amazonaws.com"),
            ("cn-north-1", "amazonaws.com.cn"),
            ("us-iso-east-1", "c2s.ic.gov"),
            ("us-isob-east-1", "sc2s.sgov.gov"),
        ] {
            assert_eq!(dns_suffix(region), suffix, "{region}");
        }
    }
}
