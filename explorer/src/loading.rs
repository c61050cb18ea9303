//! Loading a bundle into the page: from a URL (with download progress) or a local file, decoded
//! and checked, the controls fitted to it, the analysis started. A bad file never replaces what
//! is on screen. For the first bundle from a URL, its study head (`URL.head.json`, written by
//! `compact`) is fetched beside it: the study and its published verdict show from that while
//! the bundle downloads.

use super::*;
use shared::head::{head_url, StudyHead};

thread_local! {
    /// Which load is current (a later load makes an earlier one's head stale), and the head
    /// shown for it, if any.
    static LOAD: RefCell<(u64, Option<(String, StudyHead)>)> = const { RefCell::new((0, None)) };
}

fn next_load() -> u64 {
    LOAD.with(|l| {
        let mut l = l.borrow_mut();
        l.0 += 1;
        l.1 = None;
        l.0
    })
}

/// Shows the study and its published verdict from the bundle's head, if one is published and
/// nothing is on screen yet. A missing head is normal (the page then waits for the bundle); an
/// unreadable one is named.
async fn load_head(ctl: Ctl, url: String, load: u64) {
    let head_at = head_url(&url);
    let Ok(bytes) = web::fetch_bytes(&head_at, |_, _| {}).await else {
        return;
    };
    if LOAD.with(|l| l.borrow().0) != load || ctl.bundle_ready.get_untracked() {
        return;
    }
    let head = std::str::from_utf8(&bytes)
        .map_err(|_| "not UTF-8 text".to_string())
        .and_then(|t| StudyHead::from_json(&head_at, t).map_err(|e| e.to_string()));
    match head {
        Ok(head) => {
            let meta = Meta::of_head(&url, &head);
            ctl.fit_to(&meta);
            ctl.meta.set(Some(meta));
            LOAD.with(|l| l.borrow_mut().1 = Some((head_at, head)));
        }
        Err(e) => ctl.url_notices.update(|n| {
            n.push(format!(
                "The study head {head_at} was not used ({e}); the study shows when the bundle has arrived."
            ))
        }),
    }
}

pub(crate) async fn load_url(ctl: Ctl, url: String) {
    let load = next_load();
    if !ctl.bundle_ready.get_untracked() {
        leptos::task::spawn_local(load_head(ctl, url.clone(), load));
    }
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
    next_load();
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
    // The head shown while downloading must describe exactly these bytes; if not, say so (the
    // bundle's own description replaces it either way).
    if let Some((head_at, head)) = LOAD.with(|l| l.borrow_mut().1.take()) {
        if let Some(why) = head.mismatch(&bundle, &bytes) {
            ctl.url_notices.update(|n| {
                n.push(format!(
                    "The study head {head_at} does not describe this bundle ({why}); what is shown now is the bundle's own. Re-run `persona-geometry compact` and publish both files together."
                ))
            });
        }
    }
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
    // Unchanged when the head described this bundle: the summary on screen is not rebuilt.
    if ctl.meta.with_untracked(|m| m.as_ref() != Some(&meta)) {
        ctl.meta.set(Some(meta));
    }
    ctl.bundle_ready.set(true);
    ctl.status.set(String::new());
    start_analysis(ctl);
}
