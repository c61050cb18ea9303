//! Small browser helpers: fetching with progress, yielding to the event loop, downloads, the
//! query string, and the timing marks the benchmark reads.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

fn js_err(e: JsValue) -> String {
    e.as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

fn window() -> web_sys::Window {
    web_sys::window().expect("the page runs in a window")
}

/// Downloads `url`, reporting (bytes so far, total if known) after every chunk.
pub async fn fetch_bytes(
    url: &str,
    progress: impl Fn(usize, Option<usize>),
) -> Result<Vec<u8>, String> {
    let resp = JsFuture::from(window().fetch_with_str(url))
        .await
        .map_err(|e| format!("Could not download {url}: {}", js_err(e)))?;
    let resp: web_sys::Response = resp.dyn_into().map_err(js_err)?;
    if !resp.ok() {
        return Err(format!(
            "Could not download {url}: HTTP {} {}",
            resp.status(),
            resp.status_text()
        ));
    }
    let total = resp
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<usize>().ok());
    let Some(body) = resp.body() else {
        return Ok(vec![]);
    };
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut out = Vec::with_capacity(total.unwrap_or(0));
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|e| format!("Download of {url} failed: {}", js_err(e)))?;
        if Reflect::get(&chunk, &"done".into())
            .ok()
            .and_then(|d| d.as_bool())
            .unwrap_or(true)
        {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())
            .map_err(js_err)?
            .unchecked_into();
        let n = out.len();
        out.resize(n + value.length() as usize, 0);
        value.copy_to(&mut out[n..]);
        progress(out.len(), total);
    }
    Ok(out)
}

/// The bytes of a local file (file picker or drop).
pub async fn file_bytes(file: &web_sys::File) -> Result<Vec<u8>, String> {
    let buf = JsFuture::from(file.array_buffer())
        .await
        .map_err(|e| format!("Could not read {}: {}", file.name(), js_err(e)))?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// Lets the browser paint (a zero-delay timeout).
pub async fn yield_now() {
    let p = js_sys::Promise::new(&mut |resolve, _| {
        let _ = window().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 0);
    });
    let _ = JsFuture::from(p).await;
}

/// Offers `data` as a file download.
pub fn download_text(name: &str, mime: &str, data: &str) {
    let parts = js_sys::Array::of1(&JsValue::from_str(data));
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let Ok(blob) = web_sys::Blob::new_with_str_sequence_and_options(&parts, &opts) else {
        return;
    };
    let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob) else {
        return;
    };
    download_url(name, &url);
    let _ = web_sys::Url::revoke_object_url(&url);
}

/// Rasterises an SVG at `scale` times its size (the browser's own SVG renderer, through an
/// image and a canvas) and downloads it as PNG: the same picture as the SVG export, sharp in
/// print (the on-screen canvas is 1x).
pub fn download_svg_as_png(name: &str, svg: &str, (w, h): (u32, u32), scale: f64) {
    use wasm_bindgen::closure::Closure;
    let parts = js_sys::Array::of1(&JsValue::from_str(svg));
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type("image/svg+xml");
    let Ok(blob) = web_sys::Blob::new_with_str_sequence_and_options(&parts, &opts) else {
        return;
    };
    let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob) else {
        return;
    };
    let Ok(img) = web_sys::HtmlImageElement::new() else {
        return;
    };
    let (name, img2, url2) = (name.to_string(), img.clone(), url.clone());
    let (pw, ph) = ((w as f64 * scale).round(), (h as f64 * scale).round());
    let onload = Closure::once_into_js(move || {
        let doc = window().document().expect("document");
        if let Ok(el) = doc.create_element("canvas") {
            let canvas: web_sys::HtmlCanvasElement = el.unchecked_into();
            canvas.set_width(pw as u32);
            canvas.set_height(ph as u32);
            if let Ok(Some(ctx)) = canvas.get_context("2d") {
                let ctx: web_sys::CanvasRenderingContext2d = ctx.unchecked_into();
                ctx.set_fill_style_str("white");
                ctx.fill_rect(0.0, 0.0, pw, ph);
                let _ =
                    ctx.draw_image_with_html_image_element_and_dw_and_dh(&img2, 0.0, 0.0, pw, ph);
                if let Ok(data) = canvas.to_data_url_with_type("image/png") {
                    download_url(&name, &data);
                }
            }
        }
        let _ = web_sys::Url::revoke_object_url(&url2);
    });
    img.set_onload(Some(onload.unchecked_ref()));
    img.set_src(&url);
}

pub fn download_url(name: &str, url: &str) {
    let doc = window().document().expect("document");
    if let Ok(a) = doc.create_element("a") {
        let a: web_sys::HtmlAnchorElement = a.unchecked_into();
        a.set_href(url);
        a.set_download(name);
        let _ = doc.body().map(|b| b.append_child(&a));
        a.click();
        a.remove();
    }
}

/// The page's query string as (key, value) pairs.
pub fn query_pairs() -> Vec<(String, String)> {
    let search = window().location().search().unwrap_or_default();
    let Ok(params) = web_sys::UrlSearchParams::new_with_str(&search) else {
        return vec![];
    };
    let mut out = Vec::new();
    let entries = js_sys::try_iter(&params).ok().flatten();
    if let Some(it) = entries {
        for e in it.flatten() {
            let arr: js_sys::Array = e.unchecked_into();
            if let (Some(k), Some(v)) = (arr.get(0).as_string(), arr.get(1).as_string()) {
                out.push((k, v));
            }
        }
    }
    out
}

/// Replaces the query string (no reload), so that the address bar is a permalink.
pub fn set_query(pairs: &[(String, String)]) {
    let Ok(params) = web_sys::UrlSearchParams::new() else {
        return;
    };
    for (k, v) in pairs {
        params.append(k, v);
    }
    let s: String = params.to_string().into();
    let loc = window().location();
    let path = loc.pathname().unwrap_or_default();
    let url = if s.is_empty() {
        path
    } else {
        format!("{path}?{s}")
    };
    if let Ok(h) = window().history() {
        let _ = h.replace_state_with_url(&JsValue::NULL, "", Some(&url));
    }
}

/// Milliseconds since navigation start.
pub fn now_ms() -> f64 {
    window().performance().map(|p| p.now()).unwrap_or(0.0)
}

/// Records a timing/state value in `window.__pg` for tests and the benchmark.
pub fn mark(key: &str, value: JsValue) {
    let w = window();
    let obj = Reflect::get(&w, &"__pg".into())
        .ok()
        .filter(|o| o.is_object())
        .unwrap_or_else(|| {
            let o = js_sys::Object::new();
            let _ = Reflect::set(&w, &"__pg".into(), &o);
            o.into()
        });
    let _ = Reflect::set(&obj, &key.into(), &value);
}

pub fn hardware_concurrency() -> usize {
    let n = window().navigator().hardware_concurrency();
    if n.is_finite() && n >= 1.0 {
        (n as usize).min(16)
    } else {
        2
    }
}
