//! Query strings, read so that an error names the parameter: `?wait_ms=soon` is refused with
//! "wait_ms: invalid digit found in string", where actix's own extractor says only the second
//! half. The same parser as actix's (`serde_urlencoded`), with the path kept by
//! `serde_path_to_error`, as JSON bodies are read (`json.rs`).

use std::future::{ready, Ready};
use std::ops::Deref;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A handler's query parameters.
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Query<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(parse(req.query_string()).map(Query))
    }
}

/// Reads a query string into `T`; a value that does not fit is a 400 naming its parameter.
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let parser = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(parser).map_err(|e| {
        let (path, inner) = (e.path().to_string(), e.into_inner());
        // The whole query at fault (a parameter given twice): the error names the parameter.
        let message = if path == "." { inner.to_string() } else { format!("{path}: {inner}") };
        ApiError::bad_request("invalid_query", message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Q {
        wait_ms: Option<u64>,
        #[allow(dead_code)]
        limit: Option<usize>,
    }

    #[test]
    fn a_value_that_does_not_fit_names_its_parameter() {
        let q: Q = parse("limit=3&wait_ms=250").expect("parses");
        assert_eq!(q.wait_ms, Some(250));
        let e = parse::<Q>("limit=3&wait_ms=soon").expect_err("refused");
        assert!(e.message.starts_with("wait_ms: "), "{e}");
        let e = parse::<Q>("limit=-1").expect_err("refused");
        assert!(e.message.starts_with("limit: "), "{e}");
        let e = parse::<Q>("limit=1&limit=2").expect_err("refused");
        assert!(e.message.starts_with("duplicate field `limit`"), "{e}");
    }
}
