//! Helpers of the command-line tests: the real test data, the binary with its own
//! $WHISKER_HOME, real digits as an image folder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A file of the real test data (tools/fetch-testdata.sh).
pub fn testdata(name: &str) -> PathBuf {
    let dir = std::env::var_os("WHISKER_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.testdata"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: run tools/fetch-testdata.sh",
        p.display()
    );
    p
}

/// The `whisker` binary with `$WHISKER_HOME` set to `home`, quiet.
pub fn whisker(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_whisker"));
    c.env("WHISKER_HOME", home).arg("--quiet");
    c
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A fresh $WHISKER_HOME with the real EfficientNet-Lite0 weights imported.
pub fn home_with_weights() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let out = whisker(home.path())
        .args(["weights", "fetch", "efficientnet_lite0", "--from"])
        .arg(testdata("efficientnet-lite0-57934424.pth"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    home
}

/// An image folder of real digits under `dir`: `per_class` images of each of `classes`.
pub fn digits(dir: &Path, classes: &[&str], per_class: usize) -> PathBuf {
    let all = dir.join("all-digits");
    let csv = std::fs::read(testdata("digits.csv.gz")).unwrap();
    whisker::data::digits::write_image_folder(&csv, &all, Some(400)).unwrap();
    let data = dir.join("digits");
    for c in classes {
        std::fs::create_dir_all(data.join(c)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(all.join(c))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(per_class) {
            std::fs::copy(f, data.join(c).join(f.file_name().unwrap())).unwrap();
        }
    }
    data
}

/// `whisker serve` on a free port of 127.0.0.1, stopped (SIGINT, then killed) when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
}

impl Server {
    /// Start `whisker serve --addr 127.0.0.1:0 --json ARGS…` and wait for its address.
    pub fn start(home: &Path, args: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = whisker(home)
            .args(["serve", "--addr", "127.0.0.1:0", "--json"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("serve announced {line:?}: {e}"));
        Server {
            child,
            url: v["url"].as_str().unwrap().trim_end_matches('/').to_string(),
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Send SIGINT (Ctrl-C) and wait for the exit status.
    pub fn interrupt(self) -> std::process::ExitStatus {
        self.signal(libc::SIGINT)
    }

    /// Send `sig` and wait for the exit status.
    pub fn signal(mut self, sig: libc::c_int) -> std::process::ExitStatus {
        // SAFETY: signalling our own child process by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
        let t = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed().as_secs() < 20,
                "the server did not stop on signal {sig}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run with a deadline: a hang fails the test instead of blocking it.
pub fn run_with_deadline(mut c: Command, secs: u64) -> Output {
    use std::process::Stdio;
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > std::time::Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("no answer within {secs} s (a hang)");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The command did not panic.
pub fn no_panic(o: &Output) {
    let e = stderr(o);
    assert!(!e.contains("panicked"), "{e}");
}

/// The status and JSON body of an HTTP response, error statuses included.
pub fn response(r: Result<ureq::Response, ureq::Error>) -> (u16, serde_json::Value) {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport: {e}"),
    };
    let code = resp.status();
    let text = resp.into_string().unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{code}: {text:?}: {e}")),
    )
}
