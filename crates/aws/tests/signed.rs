//! The SigV4 client's retries and clock correction, against a scripted HTTP server on loopback:
//! AWS's throttling, 5xx and clock-skew answers cannot be provoked on moto, so the server plays
//! them (the status, the XML error body and the `Date` header AWS sends).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use valkey_dr_aws::signed::{Service, SignedClient, SignedError};

/// Serves `answers` in order, one per connection; returns the requests' heads as received.
async fn script(answers: Vec<String>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for answer in answers {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            // The head, then as much body as Content-Length says.
            loop {
                let n = socket.read(&mut buffer).await.unwrap();
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        log.lock().unwrap().push(text[..end].to_string());
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            socket.write_all(answer.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
        }
    });
    (url, seen)
}

fn answer(status: &str, date: Option<SystemTime>, body: &str) -> String {
    let date = date
        .map(|d| format!("Date: {}\r\n", httpdate::fmt_http_date(d)))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {status}\r\n{date}Content-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn error(code: &str, message: &str) -> String {
    format!(
        "<ErrorResponse><Error><Code>{code}</Code><Message>{message}</Message></Error></ErrorResponse>"
    )
}

fn client(url: &str) -> SignedClient {
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-2"))
        .endpoint_url(url)
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new("test", "secret", None, None, "tests"),
            ),
        )
        .build();
    SignedClient::new(&sdk)
        .unwrap()
        .with_timing(Duration::from_millis(1), Duration::from_secs(5))
}

async fn publish(client: &SignedClient) -> Result<String, SignedError> {
    client
        .query(Service::Sns, "us-east-2", "Publish", &[("Message", "hi")])
        .await
}

fn amz_date(head: &str) -> SystemTime {
    let value = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-amz-date:")
                .map(|v| v.trim().to_string())
        })
        .expect("signed");
    // 20261130T194300Z
    let stamp = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &value[0..4],
        &value[4..6],
        &value[6..8],
        &value[9..11],
        &value[11..13],
        &value[13..15]
    );
    let parsed =
        aws_smithy_types::DateTime::from_str(&stamp, aws_smithy_types::date_time::Format::DateTime)
            .unwrap();
    SystemTime::try_from(parsed).unwrap()
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_until_it_goes_through() {
    let (url, seen) = script(vec![
        answer(
            "503 Service Unavailable",
            None,
            &error("ServiceUnavailable", "busy"),
        ),
        answer(
            "400 Bad Request",
            None,
            &error("RequestLimitExceeded", "Request limit exceeded."),
        ),
        answer(
            "200 OK",
            None,
            "<PublishResponse><MessageId>m1</MessageId></PublishResponse>",
        ),
    ])
    .await;
    let answer = publish(&client(&url)).await.unwrap();
    assert!(answer.contains("m1"));
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn an_error_that_retrying_cannot_fix_is_returned_at_once() {
    let (url, seen) = script(vec![answer(
        "400 Bad Request",
        None,
        &error("InvalidParameterValue", "no such topic"),
    )])
    .await;
    let error = publish(&client(&url)).await.unwrap_err();
    assert_eq!(error.code(), Some("InvalidParameterValue"));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_skewed_clock_is_corrected_from_the_servers_date() {
    let server_time = SystemTime::now() + Duration::from_secs(3600);
    let (url, seen) = script(vec![
        answer(
            "403 Forbidden",
            Some(server_time),
            &error(
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
            ),
        ),
        answer("200 OK", Some(server_time), "<PublishResponse/>"),
        answer("200 OK", Some(server_time), "<PublishResponse/>"),
    ])
    .await;
    let client = client(&url);
    publish(&client).await.unwrap();
    // The correction sticks for the next request.
    publish(&client).await.unwrap();
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 3);
    let first = amz_date(&heads[0]);
    for corrected in [&heads[1], &heads[2]] {
        let ahead = amz_date(corrected).duration_since(first).unwrap();
        assert!(
            (Duration::from_secs(3590)..Duration::from_secs(3610)).contains(&ahead),
            "{ahead:?}"
        );
    }
}

#[tokio::test]
async fn a_server_that_keeps_failing_is_given_up_after_five_attempts() {
    let busy = answer(
        "503 Service Unavailable",
        None,
        &error("ServiceUnavailable", "busy"),
    );
    let (url, seen) = script(vec![busy; 6]).await;
    let error = publish(&client(&url)).await.unwrap_err();
    assert!(
        matches!(error, SignedError::Api { status: 503, .. }),
        "{error}"
    );
    assert_eq!(seen.lock().unwrap().len(), 5);
}

/// Review B12: a bucket in another region made deploy fail with "S3: HTTP 301" (a HEAD's redirect
/// has no body); S3 names the bucket's region in `x-amz-bucket-region`.
#[tokio::test]
async fn a_bucket_in_another_region_is_named_as_such() {
    let redirect = "HTTP/1.1 301 Moved Permanently\r\nx-amz-bucket-region: eu-west-1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string();
    let (url, seen) = script(vec![redirect]).await;
    let error = client(&url)
        .send(
            Service::S3,
            "us-east-2",
            "HEAD",
            &format!("{url}/artifacts/valkey-dr-lambda.zip"),
            &[],
            Vec::new(),
        )
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("the bucket is in eu-west-1, not us-east-2"),
        "{text}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "a redirect is not retried");
}
