//! `bilevel data fetch` against a local HTTP server on 127.0.0.1 (no internet): a mirror that
//! serves the shared MNIST copy, one that serves corrupted files, one that drops the connection
//! half way, one that answers 404, and a closed port. Files land only verified, partial
//! downloads never stay, and failures are reported per URL.
#![cfg(feature = "fetch")]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

#[path = "support/scratch.rs"]
mod scratch;

use bilevel::app::fetch::{fetch, FetchSettings, EXPECTED};
use bilevel::Error;
use scratch::Scratch;

/// The directory of the shared copy; `None` (after a visible "skipped" line) when unset outside
/// CI; a failure under CI.
fn shared() -> Option<PathBuf> {
    match std::env::var_os("BILEVEL_DATA") {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI is set but BILEVEL_DATA is not: the fetch tests serve the shared copy")
        }
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: the fetch tests need MNIST (set BILEVEL_DATA)"
            );
            None
        }
    }
}

/// Serves `/good/F`, `/bad/F` (one byte of the compressed data flipped), `/drop/F` (half the
/// body, then the connection closes) and 404 for anything else; returns the base URL.
fn serve(data: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let data = data.clone();
            std::thread::spawn(move || respond(stream, &data));
        }
    });
    base
}

fn respond(mut stream: TcpStream, data: &Path) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, file) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let body = match std::fs::read(data.join(file)) {
        Ok(b) if !file.is_empty() && ["good", "bad", "drop"].contains(&kind) => b,
        _ => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
    };
    let mut body = body;
    if kind == "bad" {
        let mid = body.len() / 2;
        body[mid] ^= 0x5a;
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let send = if kind == "drop" {
        body.len() / 2
    } else {
        body.len()
    };
    let _ = stream.write_all(&body[..send]);
}

/// A directory that does not exist yet (`fetch` creates it), inside a scratch directory that is
/// removed when the test ends.
fn tmp(name: &str) -> (Scratch, PathBuf) {
    let scratch = Scratch::new(&format!("fetch-{name}"));
    let dir = scratch.join("mnist");
    (scratch, dir)
}

fn settings(mirrors: &[String]) -> FetchSettings {
    FetchSettings {
        mirrors: mirrors.to_vec(),
        attempts: 1,
        timeout: std::time::Duration::from_secs(10),
        ..FetchSettings::default()
    }
}

/// A port nothing listens on.
fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/")
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect()
}

#[test]
fn fetch_tries_the_mirrors_in_order_and_keeps_only_verified_files() {
    let Some(data) = shared() else { return };
    let base = serve(data.clone());
    let (_scratch, dir) = tmp("order");
    let mirrors = [
        closed_port(),
        format!("{base}/missing/"),
        format!("{base}/drop/"),
        format!("{base}/bad/"),
        format!("{base}/good/"),
    ];
    let mut calls = 0usize;
    let reports = fetch(&dir, &settings(&mirrors), &mut |_, _, _| calls += 1).unwrap();
    assert!(calls > 0, "progress was reported");
    assert_eq!(reports.len(), 4);
    for (r, e) in reports.iter().zip(EXPECTED) {
        assert_eq!(
            r.url.as_deref(),
            Some(format!("{base}/good/{}.gz", e.name).as_str())
        );
        // Four failures, in mirror order, each naming its URL.
        assert_eq!(r.failures.len(), 4, "{:?}", r.failures);
        for (f, m) in r.failures.iter().zip(&mirrors) {
            assert!(f.starts_with(m.as_str()), "{f}");
        }
        assert!(r.failures[1].contains("404"), "{}", r.failures[1]);
        // The file is the shared copy, byte for byte (the same bytes were served).
        let got = std::fs::read(dir.join(&r.name)).unwrap();
        assert_eq!(got, std::fs::read(data.join(&r.name)).unwrap());
    }
    assert!(leftovers(&dir).is_empty());
    // The downloaded directory is readable by the trainer.
    bilevel::app::data::Mnist::load(&dir).unwrap();
    // A second run needs no network: everything is present and verified.
    let reports = fetch(&dir, &settings(&[closed_port()]), &mut |_, _, _| {}).unwrap();
    assert!(reports
        .iter()
        .all(|r| r.url.is_none() && r.failures.is_empty()));
}

#[test]
fn a_failed_download_replaces_nothing_and_says_where_to_put_the_files() {
    let Some(data) = shared() else { return };
    let base = serve(data);
    let (_scratch, dir) = tmp("fail");
    std::fs::create_dir_all(&dir).unwrap();
    // A corrupted file under the final name stays until a verified copy replaces it.
    let first = dir.join(format!("{}.gz", EXPECTED[0].name));
    std::fs::write(&first, b"not gzip").unwrap();
    let mirrors = [format!("{base}/bad/"), format!("{base}/drop/")];
    let err = fetch(&dir, &settings(&mirrors), &mut |_, _, _| {}).unwrap_err();
    match &err {
        Error::Download { file, attempts, .. } => {
            assert_eq!(file, &format!("{}.gz", EXPECTED[0].name));
            assert_eq!(attempts.len(), 2);
            // Rejected by the verification (a CRC, length or SHA-256 mismatch, whichever the
            // flipped byte trips first).
            assert!(attempts[0].contains("/bad/"), "{}", attempts[0]);
            let verdicts = ["does not match", "gzip", "more than"];
            assert!(
                verdicts.iter().any(|v| attempts[0].contains(v)),
                "{}",
                attempts[0]
            );
            assert!(attempts[1].contains("/drop/"), "{}", attempts[1]);
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("by hand") && message.contains(&dir.display().to_string()));
    assert_eq!(std::fs::read(&first).unwrap(), b"not gzip");
    assert!(leftovers(&dir).is_empty());
    // Nothing reachable at all: one line naming the URL tried.
    let closed = closed_port();
    let err = fetch(
        &tmp("offline").1,
        &settings(std::slice::from_ref(&closed)),
        &mut |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&closed) && err.lines().count() == 1, "{err}");
    // Attempts that fail alike are one entry naming the URL once, and the message says how to
    // use files the user already has.
    let twice = FetchSettings {
        attempts: 2,
        ..settings(std::slice::from_ref(&closed))
    };
    let err = fetch(&tmp("offline-twice").1, &twice, &mut |_, _, _| {}).unwrap_err();
    match &err {
        Error::Download { attempts, .. } => {
            assert_eq!(attempts.len(), 1, "{attempts:?}");
            assert!(attempts[0].ends_with("(2 attempts)"), "{}", attempts[0]);
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert_eq!(message.matches(closed.as_str()).count(), 1, "{message}");
    assert!(
        message.contains("BILEVEL_DATA") && message.contains("--data"),
        "{message}"
    );
}

#[test]
fn settings_are_validated() {
    let (_scratch, dir) = tmp("settings");
    for bad in [
        FetchSettings {
            mirrors: vec![],
            ..FetchSettings::default()
        },
        FetchSettings {
            attempts: 0,
            ..FetchSettings::default()
        },
    ] {
        assert!(matches!(
            fetch(&dir, &bad, &mut |_, _, _| {}),
            Err(Error::InvalidInput { .. })
        ));
    }
}
