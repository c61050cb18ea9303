//! Loading a bundle into the page: from a URL (with download progress) or a local file, decoded
//! and checked, the controls fitted to it, the analysis started. A bad file never replaces what
//! is on screen.

use super::*;

pub(crate) async fn load_url(ctl: Ctl, url: String) {
    ctl.error.set(None);
    ctl.status.set(format!("downloading {url} ..."));
    let status = ctl.status;
    let u = url.clone();
    let bytes = web::fetch_bytes(&url, move |n, total| {
        status.set(match total {
            Some(t) => format!(
                "downloading {u}: {:.1} of {:.1} MB ({:.0}%)",
                n as f64 / 1e6,
                t as f64 / 1e6,
                100.0 * n as f64 / t.max(1) as f64
            ),
            None => format!("downloading {u}: {:.1} MB", n as f64 / 1e6),
        })
    })
    .await;
    match bytes {
        Ok(b) => load_bytes(ctl, url, b).await,
        Err(e) => {
            ctl.status.set(String::new());
            ctl.error.set(Some(e));
        }
    }
}

pub(crate) async fn load_file(ctl: Ctl, file: web_sys::File) {
    ctl.error.set(None);
    ctl.status.set(format!("reading {} ...", file.name()));
    match web::file_bytes(&file).await {
        Ok(b) => load_bytes(ctl, format!("file:{}", file.name()), b).await,
        Err(e) => ctl.error.set(Some(e)),
    }
}

pub(crate) async fn load_bytes(ctl: Ctl, source: String, bytes: Vec<u8>) {
    let name = source.trim_start_matches("file:").to_string();
    ctl.status.set(format!(
        "decoding {name} ({:.1} MB) ...",
        bytes.len() as f64 / 1e6
    ));
    web::yield_now().await;
    let bundle = match decode_for_page(&name, &bytes) {
        Ok(b) => b,
        Err(e) => {
            // A bad file never replaces what is on screen.
            ctl.status.set(String::new());
            ctl.error.set(Some(e));
            return;
        }
    };
    let meta = Meta::of(&name, bytes.len(), &bundle);
    ctl.fit_to(&meta);
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.analysis = None;
        s.cache.clear();
        s.loaded = Some(Loaded {
            bytes: Rc::new(bytes),
            bundle,
        });
    });
    ctl.source.set(Some(source));
    ctl.meta.set(Some(meta));
    ctl.status.set(String::new());
    start_analysis(ctl);
}
