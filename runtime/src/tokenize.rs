//! Tokenizers: `tokenizer.json` (Hugging Face) or one rebuilt from GGUF metadata.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

/// A GPT-2-style byte-level BPE from `tokenizer.ggml.{tokens,merges,token_type}`. Control tokens
/// (type 3) become special tokens, so chat markers such as `<|im_start|>` map to one id.
/// Pre-tokenisation follows the model family's `tokenizer.json` (SmolLM2: single digits, then
/// GPT-2 byte-level regex).
pub fn tokenizer_from_gguf(content: &gguf_file::Content, tokens: &[String]) -> Result<Tokenizer> {
    let md = &content.metadata;
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if model != "gpt2" {
        bail!("GGUF tokenizer model `{model}` is not supported (gpt2 byte-level BPE only); use the model's Hugging Face directory instead");
    }
    let merges: Vec<(String, String)> = md
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.to_vec().ok())
        .context("GGUF lacks tokenizer.ggml.merges")?
        .iter()
        .filter_map(|v| v.to_string().ok())
        .filter_map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow::anyhow!("building BPE: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let byte_level = ByteLevel::new(false, true, true);
    let pt: PreTokenizerWrapper = if pre == "smollm" || pre == "default" || pre.is_empty() {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    tok.with_pre_tokenizer(Some(pt));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let types: Vec<i64> = md
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| {
            v.iter()
                .map(|x| x.to_i32().map(|i| i as i64).unwrap_or(1))
                .collect()
        })
        .unwrap_or_default();
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, &t)| t == 3)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(&specials);
    Ok(tok)
}

pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?
        .get_ids()
        .to_vec())
}

pub fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String> {
    tok.decode(ids, true)
        .map_err(|e| anyhow::anyhow!("decoding: {e}"))
}
