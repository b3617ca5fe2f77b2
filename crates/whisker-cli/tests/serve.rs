//! `whisker serve`'s JSON API end to end, over HTTP: every endpoint on real photos and the
//! real EfficientNet-Lite0, hostile uploads (truncated JPEG, a text file, a 60000×60000 PNG
//! header, an oversized body), concurrent requests against the bounded queue, and a
//! graceful stop on Ctrl-C and on SIGTERM.

mod common;

use std::io::{BufRead, Read};
use std::time::Instant;

use base64::Engine as _;
use common::*;
use serde_json::Value;

fn post(url: &str, body: &[u8]) -> (u16, Value) {
    let r = ureq::post(url).send_bytes(body);
    response(r)
}

fn get(url: &str) -> (u16, Value) {
    response(ureq::get(url).call())
}

/// A POST that announces `len` bytes and sends none of them: the reply must come from the
/// headers alone.
fn announce_only(base: &str, path: &str, len: usize) -> (u16, Value) {
    use std::io::Write;
    let host = base.trim_start_matches("http://");
    let mut t = std::net::TcpStream::connect(host).unwrap();
    t.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        t,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // headers and a small JSON body; the server closes the connection after it
    while let Ok(n) = t.read(&mut buf) {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(i) = text.find("\r\n\r\n") {
            if text[i..].contains('}') {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&reply).to_string();
    let code: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = &text[text.find('{').unwrap()..=text.rfind('}').unwrap()];
    (code, serde_json::from_str(body).unwrap())
}

/// The image of a `data:image/png;base64,…` URI.
fn data_png(uri: &str) -> image::RgbImage {
    let b64 = uri
        .strip_prefix("data:image/png;base64,")
        .expect("a PNG data URI");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

fn multipart(field: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "whisker-test-boundary-7d2f";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x.png\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A PNG that declares 60000×60000 pixels (a decompression bomb's header) and holds little.
fn bomb_png() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32(&c).to_be_bytes());
    }
    fn crc32(b: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &x in b {
            c ^= x as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn every_endpoint_on_real_photos_and_every_bad_upload() {
    let home = home_with_weights();
    let s = Server::start(
        home.path(),
        &["-b", "efficientnet_lite0", "--max-body", "2"],
    );
    let chelsea = std::fs::read(testdata("chelsea.png")).unwrap();
    let coffee = std::fs::read(testdata("coffee.png")).unwrap();

    let (code, m) = get(&s.at("/api/models"));
    assert_eq!(code, 200);
    assert_eq!(m["default"], "efficientnet_lite0");
    assert_eq!(m["models"][0]["kind"], "zoo");
    let (_, c) = get(&s.at("/api/classes"));
    assert_eq!(c["classes"].as_array().unwrap().len(), 1000);
    assert_eq!(c["classes"][282], "tiger cat");
    let (_, l) = get(&s.at("/api/layers?model=efficientnet_lite0"));
    assert_eq!(l["layers"].as_array().unwrap().len(), 18);
    assert_eq!(l["cam_default"], "head");

    // classify: the raw body, and a multipart field `image` (the CLI's JSON shape)
    let t = Instant::now();
    let (code, r) = post(&s.at("/api/classify"), &chelsea);
    let classify_ms = t.elapsed().as_millis();
    assert_eq!(code, 200, "{r}");
    let top = &r["results"][0]["top"];
    assert_eq!(top.as_array().unwrap().len(), 5);
    assert_eq!(top[0]["label"], "tiger cat");
    // the same probability as `whisker classify` prints for chelsea (37.89 %)
    assert!(
        (top[0]["prob"].as_f64().unwrap() - 0.3789).abs() < 5e-4,
        "{top}"
    );
    let (ctype, body) = multipart("image", &coffee);
    let resp = ureq::post(&s.at("/api/classify?top=2"))
        .set("Content-Type", &ctype)
        .send_bytes(&body);
    let (code, r) = response(resp);
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["results"][0]["top"][0]["label"], "espresso");
    assert_eq!(r["results"][0]["top"].as_array().unwrap().len(), 2);
    let (ctype, body) = multipart("photo", &coffee);
    let (code, r) = response(
        ureq::post(&s.at("/api/classify"))
            .set("Content-Type", &ctype)
            .send_bytes(&body),
    );
    assert_eq!(code, 400);
    assert!(r["error"].as_str().unwrap().contains("`image`"), "{r}");

    // CAM: the map, its peak on the cat, the overlay at the photo's size
    let t = Instant::now();
    let (code, r) = post(&s.at("/api/cam"), &chelsea);
    let cam_ms = t.elapsed().as_millis();
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (r["label"].as_str(), r["layer"].as_str()),
        (Some("tiger cat"), Some("head"))
    );
    let (px, py) = (
        r["peak"]["x"].as_u64().unwrap(),
        r["peak"]["y"].as_u64().unwrap(),
    );
    assert!(
        (100..=350).contains(&px) && (40..=270).contains(&py),
        "peak ({px}, {py})"
    );
    assert_eq!(
        data_png(r["overlay"].as_str().unwrap()).dimensions(),
        (451, 300)
    );
    let (code, r) = post(&s.at("/api/cam?class=tabby&method=gradcam%2B%2B"), &chelsea);
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (r["class"].as_u64(), r["method"].as_str()),
        (Some(281), Some("gradcam++"))
    );
    let (code, _) = post(&s.at("/api/cam?layer=nope"), &chelsea);
    assert_eq!(code, 400);

    // feature maps of a chosen layer
    let (code, r) = post(
        &s.at("/api/featuremap?layer=_blocks.2&channels=9"),
        &chelsea,
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (r["layer"].as_str(), r["channels"].as_u64()),
        (Some("_blocks.2"), Some(24))
    );
    assert_eq!(r["shown"].as_array().unwrap().len(), 9);
    assert!(data_png(r["image"].as_str().unwrap()).width() > 300);

    // a 10-step attack to "zebra" within 4/255; the PNG it returns is still a zebra
    let t = Instant::now();
    let (code, r) = post(
        &s.at("/api/attack?target=zebra&eps=4/255&steps=10"),
        &coffee,
    );
    let attack_ms = t.elapsed().as_millis();
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["adversarial_label"], "zebra");
    assert!(r["linf_255"].as_u64().unwrap() <= 4);
    let adv = data_png(r["adversarial"].as_str().unwrap());
    assert_eq!(adv.dimensions(), (600, 400), "the photo's own size");
    let mut png = Vec::new();
    adv.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let (_, again) = post(&s.at("/api/classify"), &png);
    assert_eq!(again["results"][0]["top"][0]["label"], "zebra");
    let (code, r) = post(&s.at("/api/attack?target=zebra&eps=2"), &coffee);
    assert_eq!(code, 400, "{r}");

    // a dream with live progress (server-sent events), then one cancelled
    let (code, d) = post(&s.at("/api/dream?class=zebra&steps=12"), b"");
    assert_eq!(code, 202, "{d}");
    let events = ureq::get(&s.at(d["events"].as_str().unwrap()))
        .call()
        .unwrap();
    assert!(events
        .header("Content-Type")
        .unwrap()
        .starts_with("text/event-stream"));
    let mut steps = Vec::new();
    let mut done = None;
    let mut kind = String::new();
    for line in std::io::BufReader::new(events.into_reader()).lines() {
        let line = line.unwrap();
        if let Some(k) = line.strip_prefix("event: ") {
            kind = k.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap();
            if kind == "done" {
                done = Some(v);
                break;
            }
            steps.push(v["step"].as_u64().unwrap());
        }
    }
    let done = done.expect("the stream ends with `done`");
    assert_eq!(done["step"], 12);
    assert_eq!(done["result"]["label"], "zebra");
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    assert_eq!(
        data_png(done["result"]["image"].as_str().unwrap()).width(),
        256
    );
    let (_, d) = post(&s.at("/api/dream?class=zebra&steps=2000"), b"");
    let status = s.at(d["status"].as_str().unwrap());
    while get(&status).1["step"].as_u64().unwrap() < 2 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, _) = response(ureq::delete(&status).call());
    assert_eq!(code, 200);
    let t = Instant::now();
    loop {
        let (_, st) = get(&status);
        if st["state"] == "cancelled" {
            assert!(st["step"].as_u64().unwrap() < 2000);
            break;
        }
        assert!(
            t.elapsed().as_secs() < 30,
            "the dream was not cancelled: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, _) = post(&s.at("/api/dream?steps=5"), b"");
    assert_eq!(code, 400, "no class");

    // hostile uploads: each a clear 4xx, and the server goes on
    let truncated = &std::fs::read(testdata("rocket.jpg")).unwrap()[..5000];
    for (what, body, want, says) in [
        ("truncated JPEG", truncated.to_vec(), 422, "truncated"),
        (
            "a text file",
            b"name,age\nfelix,3\n".to_vec(),
            422,
            "not a recognised image",
        ),
        (
            "60000x60000 PNG header",
            bomb_png(),
            413,
            "decompression bomb",
        ),
        ("empty body", Vec::new(), 400, "no image"),
    ] {
        let (code, r) = post(&s.at("/api/classify"), &body);
        assert_eq!(code, want, "{what}: {r}");
        let e = r["error"].as_str().unwrap();
        assert!(e.contains(says), "{what}: {e}");
    }
    // a body over --max-body (2 MB) is refused from its Content-Length, before it is read
    let (code, r) = announce_only(&s.url, "/api/classify", 3 << 20);
    assert_eq!(code, 413, "{r}");
    assert!(r["error"].as_str().unwrap().contains("limit"), "{r}");
    let (code, _) = post(&s.at("/api/classify?model=../../etc/passwd"), &chelsea);
    assert_eq!(code, 404, "only the models given are read");
    let (code, _) = get(&s.at("/api/../../etc/passwd"));
    assert_eq!(code, 404);
    let (code, _) = get(&s.at("/etc/passwd"));
    assert_eq!(code, 404);
    let (code, r) = post(&s.at("/api/classify?top=zero"), &chelsea);
    assert_eq!(code, 400, "{r}");
    let (code, r) = post(&s.at("/api/classify"), &chelsea);
    assert_eq!(
        (code, &r["results"][0]["top"][0]["label"]),
        (200, &Value::from("tiger cat"))
    );
    println!(
        "response times: classify {classify_ms} ms, CAM {cam_ms} ms, 10-step attack {attack_ms} ms"
    );

    // Ctrl-C: a graceful stop
    let status = s.interrupt();
    assert!(status.success(), "{status:?}");
}

#[test]
fn concurrent_heavy_requests_are_queued_or_refused_with_retry_after() {
    let home = home_with_weights();
    let s = Server::start(
        home.path(),
        &["-b", "efficientnet_lite0", "--workers", "1", "--queue", "1"],
    );
    let coffee = std::fs::read(testdata("coffee.png")).unwrap();
    // warm up (the model loads once)
    assert_eq!(post(&s.at("/api/classify"), &coffee).0, 200);
    let url = s.at("/api/attack?target=zebra&eps=4/255&steps=10");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (url, body) = (url.clone(), coffee.clone());
            std::thread::spawn(move || match ureq::post(&url).send_bytes(&body) {
                Ok(r) => (r.status(), None),
                Err(ureq::Error::Status(c, r)) => (c, r.header("Retry-After").map(str::to_string)),
                Err(e) => panic!("{e}"),
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok + busy.len(), 6, "{results:?}");
    assert!(
        ok >= 2,
        "one running and one queued are served: {results:?}"
    );
    assert!(!busy.is_empty(), "beyond the queue: 503: {results:?}");
    assert!(busy.iter().all(|r| r.1.is_some()), "503s carry Retry-After");
    // and the server serves on
    let (code, r) = post(&s.at("/api/classify"), &coffee);
    assert_eq!(
        (code, &r["results"][0]["top"][0]["label"]),
        (200, &Value::from("espresso"))
    );
    let mut buf = String::new();
    ureq::get(&s.at("/"))
        .call()
        .unwrap()
        .into_reader()
        .read_to_string(&mut buf)
        .unwrap();
    assert!(buf.contains("<title>whisker</title>"));
    // SIGTERM (a service manager's stop): a graceful exit too
    let status = s.signal(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
}
