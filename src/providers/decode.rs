//! Turning a provider's 2xx answer into what the client asked for.
//!
//! One decoder per attempt, for JSON and streams alike: fed the upstream
//! body as it arrives, it writes the client's bytes, which are Anthropic SSE
//! events for a streaming client and a message JSON otherwise. A streamed
//! answer is translated piece by piece; a whole one is collected (bounded by
//! `limits.max_response_bytes`) and translated at its end.

use super::{anthropic, bedrock, ollama, openai};
use crate::config::ProviderKind;
use crate::protocol::anthropic::Usage;
use crate::protocol::error::ApiError;
use bytes::BytesMut;

/// Whether the upstream answer has reached its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Continue,
    Done,
}

/// What a decoder needs to know of the client's request.
#[derive(Debug, Clone, Copy)]
pub struct DecoderOptions<'a> {
    /// The model name the client asked for, echoed in the answer.
    pub client_model: &'a str,
    pub client_stream: bool,
    /// The gateway's input token estimate, for `message_start`.
    pub input_estimate: u64,
    /// Largest whole (non-streamed) answer read.
    pub max_response_bytes: usize,
}

pub struct Decoder {
    inner: Inner,
}

// One per attempt, on the stack: boxing the translator would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Stream(Translator),
    Whole {
        kind: ProviderKind,
        body: Vec<u8>,
        limit: usize,
        client_model: String,
        client_stream: bool,
        usage: Usage,
    },
}

/// A provider's stream translator: upstream bytes in, Anthropic SSE out.
enum Translator {
    Openai(openai::stream::StreamTranslator),
    Anthropic(anthropic::Passthrough),
    Ollama(ollama::StreamTranslator),
    Bedrock(bedrock::StreamTranslator),
}

impl Decoder {
    /// `streamed`: the upstream answered in its stream format.
    pub(super) fn new(kind: ProviderKind, streamed: bool, opts: DecoderOptions<'_>) -> Decoder {
        let model = opts.client_model;
        let inner = if streamed && opts.client_stream {
            let mut t = match kind {
                ProviderKind::Openai => {
                    Translator::Openai(openai::stream::StreamTranslator::new(model))
                }
                ProviderKind::Anthropic => Translator::Anthropic(anthropic::Passthrough::new()),
                ProviderKind::Ollama => Translator::Ollama(ollama::StreamTranslator::new(model)),
                ProviderKind::Bedrock => Translator::Bedrock(bedrock::StreamTranslator::new(model)),
            };
            t.set_input_estimate(opts.input_estimate);
            Inner::Stream(t)
        } else {
            Inner::Whole {
                kind,
                body: Vec::new(),
                limit: opts.max_response_bytes,
                client_model: model.to_string(),
                client_stream: opts.client_stream,
                usage: Usage::default(),
            }
        };
        Decoder { inner }
    }

    /// A decoder with plain options, for tests of the translators.
    #[cfg(test)]
    pub fn for_tests(kind: ProviderKind, streamed: bool, client_stream: bool) -> Decoder {
        Decoder::new(
            kind,
            streamed,
            DecoderOptions {
                client_model: "m",
                client_stream,
                input_estimate: 10,
                max_response_bytes: 1 << 20,
            },
        )
    }

    /// Whether the answer is relayed as it arrives (else it is written at
    /// its end, all at once).
    pub fn streams(&self) -> bool {
        matches!(self.inner, Inner::Stream(_))
    }

    /// Feed upstream bytes; the client's bytes are appended to `out`. An
    /// error means the answer cannot go on.
    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<Progress, ApiError> {
        match &mut self.inner {
            Inner::Stream(t) => t.feed(bytes, out),
            Inner::Whole { body, limit, .. } => {
                if body.len() + bytes.len() > *limit {
                    return Err(ApiError::bad_upstream(format!(
                        "upstream response exceeds {limit} bytes (limits.max_response_bytes)"
                    )));
                }
                body.extend_from_slice(bytes);
                Ok(Progress::Continue)
            }
        }
    }

    /// The upstream body ended: the rest of the client's bytes.
    pub fn end_of_input(&mut self, out: &mut BytesMut) -> Result<(), ApiError> {
        match &mut self.inner {
            Inner::Stream(t) => t.end_of_input(out),
            Inner::Whole {
                kind,
                body,
                client_model,
                client_stream,
                usage,
                ..
            } => {
                *usage = whole_answer(*kind, body, client_model, *client_stream, out)?;
                Ok(())
            }
        }
    }

    pub fn usage(&self) -> Usage {
        match &self.inner {
            Inner::Stream(t) => t.usage(),
            Inner::Whole { usage, .. } => *usage,
        }
    }
}

/// A whole answer in the client's format; its usage.
fn whole_answer(
    kind: ProviderKind,
    body: &[u8],
    client_model: &str,
    client_stream: bool,
    out: &mut BytesMut,
) -> Result<Usage, ApiError> {
    let message = match kind {
        ProviderKind::Anthropic if client_stream => return anthropic::message_events(body, out),
        ProviderKind::Anthropic => {
            out.extend_from_slice(body);
            return Ok(anthropic::usage_of(body));
        }
        ProviderKind::Openai => openai::response::to_message(body, client_model)?,
        ProviderKind::Bedrock => bedrock::to_message(body, client_model)?,
        ProviderKind::Ollama => ollama::to_message(body, client_model)?,
    };
    if client_stream {
        out.extend_from_slice(&crate::protocol::sse::message_events(&message));
    } else {
        let json = serde_json::to_vec(&message).map_err(|e| ApiError::api(e.to_string()))?;
        out.extend_from_slice(&json);
    }
    Ok(message.usage)
}

impl Translator {
    fn set_input_estimate(&mut self, tokens: u64) {
        match self {
            Translator::Openai(t) => t.set_input_estimate(tokens),
            // The passthrough relays the provider's own figure.
            Translator::Anthropic(_) => {}
            Translator::Ollama(t) => t.set_input_estimate(tokens),
            Translator::Bedrock(t) => t.set_input_estimate(tokens),
        }
    }

    fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<Progress, ApiError> {
        match self {
            Translator::Openai(t) => t.feed(bytes, out),
            Translator::Anthropic(t) => t.feed(bytes, out),
            Translator::Ollama(t) => t.feed(bytes, out),
            Translator::Bedrock(t) => t.feed(bytes, out),
        }
    }

    fn end_of_input(&mut self, out: &mut BytesMut) -> Result<(), ApiError> {
        match self {
            Translator::Openai(t) => t.end_of_input(out),
            Translator::Anthropic(t) => t.end_of_input(out),
            Translator::Ollama(t) => t.end_of_input(out),
            Translator::Bedrock(t) => t.end_of_input(out),
        }
    }

    fn usage(&self) -> Usage {
        match self {
            Translator::Openai(t) => t.usage(),
            Translator::Anthropic(t) => t.usage(),
            Translator::Ollama(t) => t.usage(),
            Translator::Bedrock(t) => t.usage(),
        }
    }
}
