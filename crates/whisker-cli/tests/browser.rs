//! The web page and the report in a real browser: headless Chromium driven through the
//! DevTools protocol (over `--remote-debugging-pipe`: JSON messages on file descriptors 3
//! and 4, no extra crate). Upload chelsea.png, wait for "tiger cat" among the bars, toggle
//! the CAM, attack to "zebra" at 4/255 and see the adversarial prediction; open a digits
//! run's report.html from disk and read the accuracy it shows. Screenshots are saved under
//! `$CARGO_TARGET_TMPDIR/browser/` (or `$WHISKER_ARTEFACTS`).
//!
//! Needs Chromium (`apt-get install chromium`; `.ci/run` installs it), found as `chromium`,
//! `chromium-browser` or `$CHROMIUM`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return PathBuf::from(c);
        }
    }
    panic!(
        "Chromium is needed for the browser tests: `apt-get install chromium` (or set CHROMIUM)"
    );
}

fn artefacts() -> PathBuf {
    let d = std::env::var_os("WHISKER_ARTEFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors, owned from here on.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    }
}

/// A headless Chromium and one page of it, driven over the DevTools pipe.
struct Browser {
    child: Child,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (their_in, our_out) = pipe();
        let (our_in, their_out) = pipe();
        let (fd_in, fd_out) = (their_in.as_raw_fd(), their_out.as_raw_fd());
        let mut cmd = Command::new(chromium());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--allow-file-access-from-files",
            "--remote-debugging-pipe",
            "--window-size=1280,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(artefacts().join("chromium.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        );
        // SAFETY: between fork and exec only async-signal-safe calls (dup2).
        unsafe {
            cmd.pre_exec(move || {
                // out of the way first (either may already be 3 or 4), then into place
                // without close-on-exec
                let a = libc::fcntl(fd_in, libc::F_DUPFD, 10);
                let b = libc::fcntl(fd_out, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(a);
                libc::close(b);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start Chromium");
        drop((their_in, their_out));
        let mut b = Browser {
            child,
            to: std::fs::File::from(our_out),
            from: BufReader::new(std::fs::File::from(our_in)),
            next: 0,
            session: String::new(),
            _profile: profile,
        };
        let t = b.call("Target.createTarget", json!({"url": "about:blank"}), false);
        let target = t["targetId"].as_str().unwrap().to_string();
        let a = b.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
            false,
        );
        b.session = a["sessionId"].as_str().unwrap().to_string();
        b.call("Page.enable", json!({}), true);
        b.call("Runtime.enable", json!({}), true);
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 1600, "deviceScaleFactor": 1, "mobile": false}),
            true,
        );
        b
    }

    /// One command and its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value, in_page: bool) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if in_page {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.from.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "Chromium closed the DevTools pipe");
            buf.pop();
            let v: Value = serde_json::from_slice(&buf).unwrap();
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
            true,
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{js}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Wait until `js` is true (polling), or fail naming what was awaited.
    fn wait_for(&mut self, what: &str, js: &str, secs: u64) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if self.eval(js) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = self.eval("document.getElementById('status')?.textContent ?? ''");
        self.screenshot("timeout.png");
        panic!("waited {secs} s for {what}; the page says: {status}");
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}), true);
        self.wait_for("the page to load", "document.readyState === 'complete'", 30);
    }

    fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
            true,
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let p = artefacts().join(name);
        std::fs::write(&p, png).unwrap();
        p
    }

    /// Put `file` into the `<input type=file>` matched by `selector` (fires `change`).
    fn upload(&mut self, selector: &str, file: &Path) {
        let doc = self.call("DOM.getDocument", json!({}), true);
        let root = doc["root"]["nodeId"].clone();
        let node = self.call(
            "DOM.querySelector",
            json!({"nodeId": root, "selector": selector}),
            true,
        );
        self.call(
            "DOM.setFileInputFiles",
            json!({"files": [file.to_str().unwrap()], "nodeId": node["nodeId"]}),
            true,
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_page_classifies_explains_and_attacks_a_photo_and_the_report_opens_from_disk() {
    let home = home_with_weights();
    let s = Server::start(home.path(), &["-b", "efficientnet_lite0"]);
    let mut b = Browser::launch();
    b.navigate(&format!("{}/", s.url));
    b.wait_for(
        "the models and their classes",
        "document.getElementById('model').options.length === 1 && document.getElementById('classes').options.length === 1000",
        60,
    );

    // upload chelsea.png: "tiger cat" among the bars
    b.upload("#file", &testdata("chelsea.png"));
    b.wait_for(
        "\"tiger cat\" among the bars",
        "[...document.querySelectorAll('#bars .label')].some(e => e.textContent === 'tiger cat')",
        60,
    );
    let bars = b.eval("[...document.querySelectorAll('#bars .bar')].map(e => e.querySelector('.label').textContent + ' ' + e.querySelector('.prob').textContent)");
    assert_eq!(bars.as_array().unwrap().len(), 5, "{bars}");
    assert_eq!(bars[0], "tiger cat 37.9 %", "{bars}");
    // before any attack no empty picture is shown (a `display` rule once overrode the hidden
    // attribute: two broken-image icons)
    let empty_shown = "[...document.images].filter(i => i.offsetParent !== null && !i.getAttribute('src')).length";
    assert_eq!(b.eval(empty_shown), json!(0));
    assert_eq!(
        b.eval("document.getElementById('attack-out').offsetParent === null"),
        json!(true)
    );
    b.screenshot("classified.png");

    // the CAM toggle: the photo becomes its Grad-CAM overlay, at the photo's size
    b.eval("document.getElementById('cam-toggle').click()");
    b.wait_for(
        "the Grad-CAM overlay",
        "document.getElementById('photo').src.startsWith('data:image/png') && document.getElementById('photo').naturalWidth === 451",
        60,
    );
    let info = b.eval("document.getElementById('cam-info').textContent");
    assert_eq!(info, "tiger cat at head");
    b.screenshot("cam.png");

    // a 4/255 attack to "zebra": the adversarial prediction is shown
    b.eval(
        "document.getElementById('target').value = 'zebra'; \
         document.getElementById('eps').value = '4/255'; \
         document.getElementById('steps').value = '10'; \
         document.getElementById('attack-btn').click()",
    );
    b.wait_for(
        "the adversarial prediction",
        "document.getElementById('adv-cap').textContent.startsWith('adversarial: zebra')",
        120,
    );
    let result = b.eval("document.getElementById('adv-result').textContent");
    let result = result.as_str().unwrap();
    assert!(
        result.starts_with("Success: tiger cat → zebra · L∞ "),
        "{result}"
    );
    let linf: u32 = result
        .split("L∞ ")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(linf <= 4, "{result}");
    let href = b.eval("document.getElementById('adv-download').href.slice(0, 22)");
    assert_eq!(href, "data:image/png;base64,");
    b.screenshot("attack.png");
    // another photo: the attack of the previous one is no longer shown beside it
    b.upload("#file", &testdata("coffee.png"));
    b.wait_for(
        "\"espresso\" among the bars",
        "[...document.querySelectorAll('#bars .label')].some(e => e.textContent === 'espresso')",
        60,
    );
    assert_eq!(
        b.eval("document.getElementById('attack-out').offsetParent === null && document.getElementById('adv-result').textContent === ''"),
        json!(true)
    );
    drop(s);

    // a digits run's report.html, opened from disk: the accuracy it shows is the run's
    let data = digits(
        home.path(),
        &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        10,
    );
    let run = home.path().join("run");
    let out = whisker(home.path())
        .args(["train", "--json", "--test-split", "0.3", "--out"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let acc = doc["metrics"]["test"]["accuracy"].as_f64().unwrap();
    b.navigate(&format!("file://{}", run.join("report.html").display()));
    let shown = b.eval("document.getElementById('accuracy').textContent");
    assert_eq!(shown, json!(format!("{:.2} %", acc * 100.0)));
    // the confusion matrix answers a hover with the count and the class names
    let tip = b.eval("document.querySelector('#confusion rect.cell[data-true=\"3\"][data-pred=\"3\"] title').textContent");
    assert!(
        tip.as_str()
            .unwrap()
            .starts_with("true: 3 → predicted: 3: "),
        "{tip}"
    );
    // the per-class table sorts on a click
    b.eval("document.querySelectorAll('#classes th')[4].click()");
    let sorted = b.eval(
        "[...document.querySelectorAll('#classes tbody tr')].map(r => +r.cells[4].textContent)",
    );
    let v: Vec<f64> = sorted
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(v.windows(2).all(|w| w[0] <= w[1]), "{v:?}");
    let shot = b.screenshot("report.png");
    println!("screenshots in {}", shot.parent().unwrap().display());
}
