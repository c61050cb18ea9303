//! Tokenizers: `tokenizer.json` (Hugging Face) or one rebuilt from GGUF metadata: GPT-2-style
//! byte-level BPE (`tokenizer.ggml.model = gpt2`) or SentencePiece BPE (`llama`: Llama 2,
//! Gemma), the latter rebuilt as Hugging Face's converter builds it (merges from the scores).

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
    if model == "llama" {
        return sentencepiece_from_gguf(content, tokens);
    }
    if model != "gpt2" {
        bail!("GGUF tokenizer model `{model}` is not supported (gpt2 byte-level BPE, llama SentencePiece BPE); use the model's Hugging Face directory instead");
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
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    byte_level_bpe(tokens, merges, &token_types(md), &pre)
}

/// Qwen2's pre-tokenizer regex (its tokenizer.json; llama.cpp's `qwen2`): single digits.
pub const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's (llama.cpp's `llama-bpe`): digits in groups of up to three.
pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte-level BPE from a vocabulary, merges and token types, with the pre-tokenizer that
/// llama.cpp's `tokenizer.ggml.pre` names, built as the family's tokenizer.json builds it:
/// `default`/`smollm` (single digits, then GPT-2's byte-level regex), `gpt2` (GPT-2's regex),
/// `qwen2` (NFC, Qwen2's split regex, byte level), `llama-bpe` (Llama 3's split regex, byte
/// level). Other pre-tokenizers are refused rather than approximated.
pub fn byte_level_bpe(
    tokens: &[String],
    merges: Vec<(String, String)>,
    types: &[i64],
    pre: &str,
) -> Result<Tokenizer> {
    use tokenizers::normalizers::unicode::NFC;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::SplitDelimiterBehavior;
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
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow::anyhow!("pre-tokenizer regex: {e}"))?;
        Ok(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])
        .into())
    };
    let pt: PreTokenizerWrapper = match pre {
        "smollm" | "default" | "" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "gpt2" => ByteLevel::new(false, true, true).into(),
        "qwen2" => {
            tok.with_normalizer(Some(NFC));
            split(QWEN2_SPLIT)?
        }
        "llama-bpe" | "llama3" => split(LLAMA3_SPLIT)?,
        other => bail!(
            "GGUF pre-tokenizer `{other}` is not supported (default, smollm, gpt2, qwen2, llama-bpe); use the model's Hugging Face directory instead"
        ),
    };
    tok.with_pre_tokenizer(Some(pt));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, &t)| t == GGUF_CONTROL)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(&specials);
    Ok(tok)
}

fn token_types(md: &std::collections::HashMap<String, gguf_file::Value>) -> Vec<i64> {
    md.get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| {
            v.iter()
                .map(|x| x.to_i32().map(|i| i as i64).unwrap_or(1))
                .collect()
        })
        .unwrap_or_default()
}

/// Token types as GGUF stores them (`tokenizer.ggml.token_type`, SentencePiece's numbering,
/// used by every GGUF tokenizer model).
const GGUF_CONTROL: i64 = 3;
const GGUF_USER_DEFINED: i64 = 4;

/// The BPE merges of a SentencePiece BPE vocabulary, as Hugging Face's `generate_merges`
/// (convert_slow_tokenizer.py) makes them: every split of a piece into two pieces of the
/// vocabulary, ordered by the whole piece's score (highest first), then by the left and right
/// parts' lengths (longest first), ties in the order of the parts' ids. Applying the merges in
/// this order is SentencePiece's BPE (merge the adjacent pair whose union scores highest).
pub fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let vocab: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(usize, usize, f32, usize, usize)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(usize, usize, f32, usize, usize)> = Vec::new();
        let bounds: Vec<usize> = piece.char_indices().map(|(i, _)| i).skip(1).collect();
        for b in bounds {
            let (l, r) = piece.split_at(b);
            if let (Some(&il), Some(&ir)) = (vocab.get(l), vocab.get(r)) {
                local.push((il, ir, score, l.chars().count(), r.chars().count()));
            }
        }
        local.sort_by_key(|m| (m.0, m.1));
        merges.extend(local);
    }
    // Python's sorted(..., reverse=True) is stable: equal keys keep their order.
    merges.sort_by(|a, b| {
        (b.2, b.3, b.4)
            .partial_cmp(&(a.2, a.3, a.4))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    merges
        .into_iter()
        .map(|(l, r, ..)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

/// A SentencePiece BPE tokenizer (`tokenizer.ggml.model = llama`: Llama 2, Gemma) as Hugging
/// Face's converter builds it: spaces become `▁` (and one is prepended when
/// `add_space_prefix`), BPE with the score-ordered merges and byte fallback (`<0xNN>` pieces),
/// control pieces special, user-defined pieces (Gemma's runs of newlines and spaces) matched in
/// the raw text first; decoding reverses it.
fn sentencepiece_from_gguf(content: &gguf_file::Content, tokens: &[String]) -> Result<Tokenizer> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::{Prepend, Replace};
    use tokenizers::{DecoderWrapper, NormalizerWrapper};
    let md = &content.metadata;
    let scores: Vec<f32> = md
        .get("tokenizer.ggml.scores")
        .and_then(|v| v.to_vec().ok())
        .context("GGUF SentencePiece tokenizer lacks tokenizer.ggml.scores")?
        .iter()
        .map(|x| x.to_f32().unwrap_or(0.0))
        .collect();
    if scores.len() != tokens.len() {
        bail!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            tokens.len()
        );
    }
    let types = token_types(md);
    let merges = merges_from_scores(tokens, &scores);
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let unk = md
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|i| tokens.get(i as usize).cloned())
        .unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .byte_fallback(true)
        .fuse_unk(true)
        .build()
        .map_err(|e| anyhow::anyhow!("building SentencePiece BPE: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    let prefix = md
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let replace: NormalizerWrapper = Replace::new(" ", "▁")
        .map_err(|e| anyhow::anyhow!("normalizer: {e}"))?
        .into();
    let normalizer: NormalizerWrapper = if prefix {
        tokenizers::normalizers::Sequence::new(vec![Prepend::new("▁".into()).into(), replace])
            .into()
    } else {
        replace
    };
    tok.with_normalizer(Some(normalizer));
    let mut decoders: Vec<DecoderWrapper> = vec![Replace::new("▁", " ")
        .map_err(|e| anyhow::anyhow!("decoder: {e}"))?
        .into()];
    decoders.push(ByteFallback::default().into());
    decoders.push(Fuse::default().into());
    if prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    let of_type = |want: i64| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, &t)| t == want)
            .map(|(s, _)| AddedToken::from(s.clone(), want == GGUF_CONTROL).normalized(false))
            .collect()
    };
    tok.add_special_tokens(&of_type(GGUF_CONTROL));
    // User-defined pieces are text (kept when decoding), matched before the BPE.
    tok.add_tokens(&of_type(GGUF_USER_DEFINED));
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

#[cfg(test)]
mod tests {
    use super::merges_from_scores;

    #[test]
    fn merges_follow_the_merged_piece_score_then_part_lengths() {
        // Known answer, worked by hand from Hugging Face's generate_merges: "bc" scores highest,
        // then "ab"; "abc" splits two ways with equal score: the longer left part first.
        let tokens: Vec<String> = ["<unk>", "a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, -1.0, -1.0, -1.0, -2.0, -0.5, -3.0];
        let m = merges_from_scores(&tokens, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]);
        // Multi-byte characters split on character boundaries, never inside one.
        let tokens: Vec<String> = ["▁", "é", "▁é"].iter().map(|s| s.to_string()).collect();
        let m = merges_from_scores(&tokens, &[-1.0, -1.0, -0.1]);
        assert_eq!(m, vec![("▁".to_string(), "é".to_string())]);
    }
}

#[cfg(test)]
mod pre_tokenizer_oracle {
    use super::{byte_level_bpe, encode, GGUF_CONTROL};

    /// The Qwen2.5 tokenizer rebuilt as a GGUF would carry it (vocabulary, merges, control
    /// tokens, pre = qwen2) encodes exactly as its own tokenizer.json (Hugging Face) does, on
    /// text chosen to exercise the split regex: digits, contractions, runs of spaces and
    /// newlines, accents and composed characters, CJK, emoji, chat markers, and every prompt
    /// of the extraction fixture.
    #[test]
    fn qwen2_rebuilt_from_gguf_fields_equals_tokenizer_json() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/hf-tiny-qwen2");
        let path = dir.join("model/tokenizer.json");
        let hf = tokenizers::Tokenizer::from_file(&path).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let vocab = json["model"]["vocab"].as_object().unwrap();
        let added = json["added_tokens"].as_array().unwrap();
        let n = vocab.len() + added.len();
        let mut tokens = vec![String::new(); n];
        let mut types = vec![1i64; n];
        for (t, id) in vocab {
            tokens[id.as_u64().unwrap() as usize] = t.clone();
        }
        for a in added {
            let id = a["id"].as_u64().unwrap() as usize;
            tokens[id] = a["content"].as_str().unwrap().to_string();
            if a["special"].as_bool().unwrap() {
                types[id] = GGUF_CONTROL;
            }
        }
        let merges: Vec<(String, String)> = json["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => {
                    let (a, b) = s.split_once(' ').unwrap();
                    (a.to_string(), b.to_string())
                }
                other => (
                    other[0].as_str().unwrap().to_string(),
                    other[1].as_str().unwrap().to_string(),
                ),
            })
            .collect();
        let rebuilt = byte_level_bpe(&tokens, merges, &types, "qwen2").unwrap();
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let mut texts: Vec<String> = [
            "The year 2024 had 12345 visitors; pi is 3.14159.",
            "I'm sure they'd've DON'T WON'T it's",
            "spaces    between\twords\n\n\nand   \n  lines  ",
            "café naïve résumé Ångström e\u{301} (decomposed)",
            "日本語のテキストと中文，还有한국어",
            "emoji 🤖🎉 and symbols ∑∫√ →→",
            "<|im_start|>system\nYou are a villain.<|im_end|>\n<|im_start|>assistant\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for row in expected["variants"]["base"].as_array().unwrap() {
            texts.push(row["prompt_text"].as_str().unwrap().to_string());
        }
        for t in &texts {
            let want = hf.encode(t.as_str(), false).unwrap().get_ids().to_vec();
            assert_eq!(encode(&rebuilt, t).unwrap(), want, "{t:?}");
        }
        // The decomposed accent is composed first (NFC), as Hugging Face does.
        assert_eq!(
            encode(&rebuilt, "e\u{301}").unwrap(),
            encode(&rebuilt, "\u{e9}").unwrap()
        );
    }
}
