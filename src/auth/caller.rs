//! Who a REST caller claims to be: the bearer token of `Authorization` and,
//! when no `X-User-Id` is sent, the `user_id` claim inside that token.
//!
//! The claim is read without checking the signature: it only says which user
//! to ask Django about, and Django confirms the token belongs to that user.

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use crate::model::UserId;

/// SimpleJWT (PyJWT) writes base64url without padding; padding is tolerated
/// so a token re-encoded by another library still reads.
const JWT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The token of an `Authorization: Bearer <token>` header value; the scheme
/// is case-insensitive and the token must be non-empty, without spaces.
pub(crate) fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim_start();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return None;
    }
    Some(token)
}

/// The positive `user_id` claim of a JWT (`header.payload.signature`), as a
/// JSON number or a string of digits; `None` for anything else.
pub(crate) fn user_id_from_jwt(token: &str) -> Option<UserId> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let json = JWT_BASE64.decode(payload).ok()?;
    // Untrusted and unverified, but safe to parse: serde_json refuses more
    // than 128 nested levels (its recursion limit, off only if a caller
    // disables it), so a deep payload is no claim, not a stack overflow.
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let id = match claims.get("user_id")? {
        serde_json::Value::Number(number) => number.as_i64()?,
        serde_json::Value::String(digits)
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            digits.parse().ok()?
        }
        _ => return None,
    };
    (id > 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwt(payload: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        format!("{header}.{}.c2lnbmF0dXJl", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn reads_a_simplejwt_access_token() {
        // Shaped like SimpleJWT's default access token.
        let token = jwt(
            r#"{"token_type":"access","exp":1735725600,"iat":1735722000,"jti":"a1b2","user_id":15}"#,
        );
        assert_eq!(user_id_from_jwt(&token), Some(15));
    }

    #[test]
    fn reads_a_string_of_digits() {
        assert_eq!(user_id_from_jwt(&jwt(r#"{"user_id":"42"}"#)), Some(42));
    }

    #[test]
    fn payloads_needing_padding_and_url_safe_characters_read() {
        // This payload's base64url has a '-' (standard base64: '+') and
        // needs one '=' of padding, which SimpleJWT leaves out.
        let payload = r#"{"user_id":7,"x":"~~~"}"#;
        assert!(base64::engine::general_purpose::URL_SAFE
            .encode(payload)
            .ends_with("-In0="));
        assert_eq!(user_id_from_jwt(&jwt(payload)), Some(7));
        let padded = {
            let header = URL_SAFE_NO_PAD.encode("{}");
            let payload = base64::engine::general_purpose::URL_SAFE.encode(r#"{"user_id":8}"#);
            format!("{header}.{payload}.sig")
        };
        assert_eq!(user_id_from_jwt(&padded), Some(8));
    }

    #[test]
    fn rejects_wrong_claim_types_and_values() {
        for payload in [
            r#"{"user_id":-3}"#,
            r#"{"user_id":0}"#,
            r#"{"user_id":"-3"}"#,
            r#"{"user_id":"+3"}"#,
            r#"{"user_id":" 3"}"#,
            r#"{"user_id":""}"#,
            r#"{"user_id":"abc"}"#,
            r#"{"user_id":"99999999999999999999"}"#,
            r#"{"user_id":99999999999999999999}"#,
            r#"{"user_id":1.5}"#,
            r#"{"user_id":true}"#,
            r#"{"user_id":null}"#,
            r#"{"user_id":[1]}"#,
            r#"{"user_id":{"id":1}}"#,
            r#"{"id":1}"#,
            r#"[1]"#,
            r#"15"#,
            r#"not json"#,
        ] {
            assert_eq!(user_id_from_jwt(&jwt(payload)), None, "{payload}");
        }
    }

    #[test]
    fn rejects_malformed_tokens() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"user_id":15}"#);
        for token in [
            String::new(),
            "garbage".to_string(),
            "...".to_string(),
            format!("header.{payload}"),
            payload.clone(),
            format!("h.{payload}.s.extra"),
            "h.!!!not-base64!!!.s".to_string(),
            format!("h.{payload}=x.s"),
        ] {
            assert_eq!(user_id_from_jwt(&token), None, "{token}");
        }
        assert_eq!(user_id_from_jwt(&format!("h.{payload}.s")), Some(15));
    }

    #[test]
    fn deep_payloads_are_no_claim() {
        const DEPTH: usize = 100_000;
        for nested in [
            format!("{}1{}", "[".repeat(DEPTH), "]".repeat(DEPTH)),
            format!("{}1{}", r#"{"a":"#.repeat(DEPTH), "}".repeat(DEPTH)),
        ] {
            assert_eq!(user_id_from_jwt(&jwt(&nested)), None);
            let beside = format!(r#"{{"user_id":15,"x":{nested}}}"#);
            assert_eq!(user_id_from_jwt(&jwt(&beside)), None);
        }
        // The limit is serde_json's 128 levels: below it a claim reads.
        let shallow = format!(
            r#"{{"user_id":15,"x":{}{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(user_id_from_jwt(&jwt(&shallow)), Some(15));
    }

    #[test]
    fn bearer_token_reads_the_header() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
    }

    #[test]
    fn bearer_token_rejects_other_shapes() {
        for value in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "Basic abc",
            "Token abc",
            "abc",
            "Bearer a b",
            "Bearerabc",
        ] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
