//! `JsonBody`: the API's request-body extractor. It reads the body (size limits come from
//! `web::PayloadConfig`) but parses only when the handler asks — after it has checked the
//! caller's role, so a caller without the right gets 403 whatever it sent. Parsing goes through
//! `serde_path_to_error`, so a bad body is refused with the path of the field at fault.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::web::Bytes;
use actix_web::{FromRequest, HttpRequest};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 1 << 20;

pub struct JsonBody {
    bytes: Bytes,
    is_json: bool,
}

impl JsonBody {
    /// Whether the request had no body at all.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Parses the body as `T`, naming the field at fault.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if !self.is_json {
            return Err(ApiError::new(
                actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with 'Content-Type: application/json'",
            ));
        }
        parse(&self.bytes)
    }
}

impl FromRequest for JsonBody {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = req
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let bytes = Bytes::from_request(req, payload);
        Box::pin(async move {
            let body = bytes.await.map_err(|e| {
                if e.as_response_error().status_code() == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("request body is larger than {MAX_BODY_BYTES} bytes"),
                    )
                } else {
                    ApiError::bad_request("invalid_body", format!("request body could not be read: {e}"))
                }
            })?;
            Ok(JsonBody { bytes: body, is_json })
        })
    }
}

/// Parses JSON, naming the field at fault.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Every body is an object. serde reads a struct from an array too, by position, so
    // `["gamma"]` removed node gamma as `{"node": "gamma"}` would: no field was named, and no
    // client means that.
    if body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b != b'{') {
        return Err(ApiError::bad_request("invalid_body", "body: expected a JSON object ({…})"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut msg = inner.to_string();
        if let Some(pos) = msg.find(" at line ") {
            msg.truncate(pos);
        }
        let message = if path == "." { format!("body: {msg}") } else { format!("{path}: {msg}") };
        ApiError::bad_request("invalid_body", message)
    })?;
    // Nothing after the value: `{"name":"k"} ["more"]` was taken as the first object.
    de.end().map_err(|_| ApiError::bad_request("invalid_body", "body: something follows the JSON object"))?;
    Ok(value)
}
