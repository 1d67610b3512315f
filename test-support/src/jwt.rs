//! For the JWT tests: tokens minted with real test keys (`keys/jwt`), and a local JWKS server.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub const ISSUER: &str = "https://auth.example.com/";
pub const AUDIENCE: &str = "orders";

/// A test key: `rsa`, `rsa-other` or `ec`.
pub fn key(name: &str) -> (EncodingKey, Algorithm) {
    let pem: &[u8] = match name {
        "rsa" => include_bytes!("../keys/jwt/rsa.pem"),
        "rsa-other" => include_bytes!("../keys/jwt/rsa-other.pem"),
        "ec" => include_bytes!("../keys/jwt/ec.pem"),
        other => panic!("no test key {other}"),
    };
    if name == "ec" {
        (
            EncodingKey::from_ec_pem(pem).expect("ec key"),
            Algorithm::ES256,
        )
    } else {
        (
            EncodingKey::from_rsa_pem(pem).expect("rsa key"),
            Algorithm::RS256,
        )
    }
}

/// The public JWK of test key `name`, under `kid`.
pub fn jwk(name: &str, kid: &str) -> Value {
    let (key, alg) = key(name);
    let mut jwk = Jwk::from_encoding_key(&key, alg).expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).expect("json")
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Valid claims with `overrides` merged in (a `null` override removes the claim).
pub fn claims(overrides: Value) -> Value {
    let mut claims =
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now(), "exp": now() + 600});
    if let (Some(c), Some(o)) = (claims.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    claims
}

/// A token signed with test key `name`, header `kid`.
pub fn token(name: &str, kid: &str, claims: &Value) -> String {
    let (key, alg) = key(name);
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// An unsigned token (`alg: none`).
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(claims.to_string().as_bytes())
    )
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A JWKS endpoint on 127.0.0.1: serves `set`, counts fetches, can go down.
pub struct JwksServer {
    pub url: String,
    pub fetches: Arc<AtomicUsize>,
    pub down: Arc<AtomicBool>,
    pub set: Arc<Mutex<Value>>,
    /// Milliseconds to wait before answering.
    pub delay_ms: Arc<AtomicU64>,
}

impl JwksServer {
    pub fn start(set: Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://127.0.0.1:{}/jwks.json",
            listener.local_addr().expect("addr").port()
        );
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let set = Arc::new(Mutex::new(set));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (f, d, s) = (Arc::clone(&fetches), Arc::clone(&down), Arc::clone(&set));
        let slow = Arc::clone(&delay_ms);
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                f.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(
                    slow.load(Ordering::SeqCst),
                ));
                let response = if d.load(Ordering::SeqCst) {
                    "HTTP/1.1 503 Down\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
                } else {
                    let body = s.lock().expect("set").to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        JwksServer {
            url,
            fetches,
            down,
            set,
            delay_ms,
        }
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}
