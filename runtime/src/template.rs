//! Chat templates rendered as Hugging Face renders them: Jinja with trim_blocks and
//! lstrip_blocks, `raise_exception`, Python-style `tojson` (json.dumps: ", " and ": "
//! separators, non-ASCII kept), `strftime_now`, and Python string methods.

use anyhow::{Context, Result};
use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn py_json(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(": ");
                py_json(x, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |_fmt: String| -> Result<Value, Error> {
            // Deterministic output matters more than the wall clock here; templates use it only to
            // print a "today" line.
            Ok(Value::from("26 Jul 2024"))
        });
        env.add_filter("tojson", |v: Value| -> Result<Value, Error> {
            let j: serde_json::Value = serde_json::to_value(&v)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            let mut s = String::new();
            py_json(&j, &mut s);
            Ok(Value::from_safe_string(s))
        });
        env.add_template_owned("chat", source.to_string())
            .context("the chat template does not parse")?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        })
    }

    /// Renders (system?, user, assistant?) as the model's own template does. An empty system
    /// prompt means no system message (the template may then insert its default).
    pub fn render(
        &self,
        system: &str,
        user: &str,
        assistant: Option<&str>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let mut messages = Vec::new();
        if !system.is_empty() {
            messages.push(serde_json::json!({"role": "system", "content": system}));
        }
        messages.push(serde_json::json!({"role": "user", "content": user}));
        if let Some(a) = assistant {
            messages.push(serde_json::json!({"role": "assistant", "content": a}));
        }
        self.render_messages(&messages, add_generation_prompt)
    }

    /// Any conversation (`[{"role": ..., "content": ...}, ...]`), as the model's template
    /// renders it (training data has several turns).
    pub fn render_messages(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tpl = self.env.get_template("chat").expect("added in new");
        tpl.render(minijinja::context! {
            messages => Value::from_serialize(&messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        })
        .context("rendering the chat template")
    }
}
