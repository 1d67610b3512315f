//! `policy-engine healthcheck`: a client for container health checks (no shell or curl in the
//! image).

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::time::Duration;

/// `GET /health/ready` on the admin API; succeeds on 200.
pub(super) fn ready_check(admin: &str, timeout: Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let addr = loopback_if_unspecified(
        admin
            .parse()
            .with_context(|| format!("--admin {admin:?} is not HOST:PORT"))?,
    );
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(
        format!("GET /health/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .with_context(|| format!("reading the answer of {addr}"))?;
    match &head[9..12] {
        b"200" => Ok(()),
        status => bail!(
            "{addr}/health/ready answered {}: not ready",
            String::from_utf8_lossy(status)
        ),
    }
}

fn loopback_if_unspecified(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

pub(super) fn healthcheck(listen: &str, timeout: Duration) -> anyhow::Result<()> {
    if let Some(path) = listen.strip_prefix("unix:") {
        std::os::unix::net::UnixStream::connect(path)
            .with_context(|| format!("connecting to {listen}"))?;
        return Ok(());
    }
    let addr = loopback_if_unspecified(
        listen
            .parse()
            .with_context(|| format!("{listen:?} is not HOST:PORT or unix:/PATH"))?,
    );
    std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(())
}
