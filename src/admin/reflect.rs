//! Pulling a backend's descriptors through gRPC server reflection (grpc.reflection.v1, or
//! v1alpha when the server lacks v1) into one descriptor set.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::descriptors::bundled_set;
use crate::proto::grpc::reflection::{v1, v1alpha};
use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

/// The most files one reflection may bring back.
const MAX_FILES: usize = 10_000;

/// Why reflection did not produce a set.
#[derive(Debug, thiserror::Error)]
pub enum ReflectError {
    /// The backend could not be reached or broke off the stream.
    #[error("reflection call failed: {0}")]
    Call(String),
    /// The backend serves neither reflection version.
    #[error("the backend serves neither grpc.reflection.v1 nor v1alpha")]
    Unsupported,
    /// The backend answered a question with an error.
    #[error("the backend could not answer {question}: {message}")]
    Answer {
        /// What was asked.
        question: String,
        /// What it said.
        message: String,
    },
    /// The backend's files are unusable.
    #[error("{0}")]
    Invalid(String),
    /// It took too long.
    #[error("reflection did not finish within {0:?}")]
    Timeout(Duration),
}

/// Asks the backend behind `channel` for every service it offers (except reflection itself) and
/// the files defining them with their imports, and returns them as an encoded FileDescriptorSet
/// sorted by file name. Files the gateway bundles (google/api, google/rpc, google/protobuf) are
/// left out, since the bundled copies satisfy imports and two backends built with different
/// protobuf releases would otherwise conflict over them.
pub async fn fetch(channel: Channel, limit: Duration) -> Result<Bytes, ReflectError> {
    tokio::time::timeout(limit, fetch_files(channel))
        .await
        .map_err(|_| ReflectError::Timeout(limit))?
}

async fn fetch_files(channel: Channel) -> Result<Bytes, ReflectError> {
    let list = MessageRequest::ListServices(String::new());
    let (mut talk, answer) =
        match Conversation::open(channel.clone(), Version::V1, list.clone()).await {
            Err(ReflectError::Unsupported) => {
                Conversation::open(channel, Version::V1Alpha, list).await?
            }
            other => other?,
        };
    let services: Vec<String> = match answer {
        MessageResponse::ListServicesResponse(list) => list
            .service
            .into_iter()
            .map(|s| s.name)
            .filter(|name| !name.starts_with("grpc.reflection."))
            .collect(),
        other => return Err(unexpected("the service list", &other)),
    };
    if services.is_empty() {
        return Err(ReflectError::Invalid(
            "the backend lists no service besides reflection".to_owned(),
        ));
    }

    let bundled: HashSet<String> = bundled_set()
        .file
        .into_iter()
        .map(|f| f.name().to_owned())
        .collect();
    let mut files: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for service in &services {
        let question = format!("the file of {service}");
        let answer = talk
            .ask(
                MessageRequest::FileContainingSymbol(service.clone()),
                &question,
            )
            .await?;
        take_files(answer, &question, &mut files, &mut wanted)?;
    }
    // Imports the answers did not include, asked for by name until none is missing.
    loop {
        let missing: Vec<String> = wanted
            .iter()
            .filter(|name| !files.contains_key(*name) && !bundled.contains(*name))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        for name in missing {
            let question = format!("file {name:?}");
            let answer = talk
                .ask(MessageRequest::FileByFilename(name.clone()), &question)
                .await?;
            take_files(answer, &question, &mut files, &mut wanted)?;
            if !files.contains_key(&name) {
                return Err(ReflectError::Invalid(format!(
                    "the backend did not send {name:?} when asked for it"
                )));
            }
        }
    }
    talk.close();
    let set = RawSet {
        file: files
            .into_iter()
            .filter(|(name, _)| !bundled.contains(name))
            .map(|(_, raw)| raw)
            .collect(),
    };
    Ok(set.encode_to_vec().into())
}

/// A FileDescriptorSet of files kept as received, so custom options (google.api.http) survive.
#[derive(Clone, PartialEq, prost::Message)]
struct RawSet {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    file: Vec<Bytes>,
}

fn take_files(
    answer: MessageResponse,
    question: &str,
    files: &mut BTreeMap<String, Bytes>,
    wanted: &mut BTreeSet<String>,
) -> Result<(), ReflectError> {
    let MessageResponse::FileDescriptorResponse(response) = answer else {
        return Err(unexpected(question, &answer));
    };
    for raw in response.file_descriptor_proto {
        let file = prost_types::FileDescriptorProto::decode(raw.as_slice()).map_err(|e| {
            ReflectError::Invalid(format!("{question}: not a FileDescriptorProto: {e}"))
        })?;
        if file.name().is_empty() {
            return Err(ReflectError::Invalid(format!(
                "{question}: a file has no name"
            )));
        }
        wanted.extend(file.dependency.iter().cloned());
        files.insert(file.name().to_owned(), raw.into());
        if files.len() > MAX_FILES {
            return Err(ReflectError::Invalid(format!(
                "the backend sent more than {MAX_FILES} files"
            )));
        }
    }
    Ok(())
}

fn unexpected(question: &str, answer: &MessageResponse) -> ReflectError {
    match answer {
        MessageResponse::ErrorResponse(err) => ReflectError::Answer {
            question: question.to_owned(),
            message: format!(
                "{} ({:?})",
                err.error_message,
                Code::from_i32(err.error_code)
            ),
        },
        _ => ReflectError::Invalid(format!("{question}: an answer of another kind came back")),
    }
}

#[derive(Debug, Clone, Copy)]
enum Version {
    V1,
    V1Alpha,
}

/// One reflection stream: a question, then its answer, in turn. The two versions have the same
/// messages under different packages, so v1alpha traffic is converted to and from v1 through the
/// wire format.
enum Conversation {
    V1 {
        questions: mpsc::Sender<v1::ServerReflectionRequest>,
        answers: Streaming<v1::ServerReflectionResponse>,
    },
    V1Alpha {
        questions: mpsc::Sender<v1alpha::ServerReflectionRequest>,
        answers: Streaming<v1alpha::ServerReflectionResponse>,
    },
}

impl Conversation {
    /// Opens a stream and asks `first`; the question is queued before the call starts, since a
    /// server may hold back its response headers until it has a message to answer.
    async fn open(
        channel: Channel,
        version: Version,
        first: MessageRequest,
    ) -> Result<(Conversation, MessageResponse), ReflectError> {
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(first),
        };
        let mut talk = match version {
            Version::V1 => {
                let (tx, rx) = mpsc::channel(4);
                send(&tx, request.clone()).await?;
                let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
                let answers = client
                    .server_reflection_info(ReceiverStream::new(rx))
                    .await
                    .map_err(call_error)?
                    .into_inner();
                Conversation::V1 {
                    questions: tx,
                    answers,
                }
            }
            Version::V1Alpha => {
                let (tx, rx) = mpsc::channel(4);
                send(&tx, convert(&request)?).await?;
                let mut client =
                    v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
                let answers = client
                    .server_reflection_info(ReceiverStream::new(rx))
                    .await
                    .map_err(call_error)?
                    .into_inner();
                Conversation::V1Alpha {
                    questions: tx,
                    answers,
                }
            }
        };
        let answer = talk.answer("the service list").await?;
        Ok((talk, answer))
    }

    async fn ask(
        &mut self,
        question: MessageRequest,
        what: &str,
    ) -> Result<MessageResponse, ReflectError> {
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(question),
        };
        match self {
            Conversation::V1 { questions, .. } => send(questions, request).await?,
            Conversation::V1Alpha { questions, .. } => send(questions, convert(&request)?).await?,
        }
        self.answer(what).await
    }

    async fn answer(&mut self, what: &str) -> Result<MessageResponse, ReflectError> {
        let answer: Option<v1::ServerReflectionResponse> = match self {
            Conversation::V1 { answers, .. } => answers.message().await.map_err(call_error)?,
            Conversation::V1Alpha { answers, .. } => {
                match answers.message().await.map_err(call_error)? {
                    Some(answer) => Some(convert(&answer)?),
                    None => None,
                }
            }
        };
        answer
            .and_then(|a| a.message_response)
            .ok_or_else(|| ReflectError::Call(format!("the stream ended before {what} came")))
    }

    /// Ends the stream from this side.
    fn close(self) {
        drop(self);
    }
}

async fn send<T>(questions: &mpsc::Sender<T>, request: T) -> Result<(), ReflectError> {
    questions
        .send(request)
        .await
        .map_err(|_| ReflectError::Call("the backend closed the stream".to_owned()))
}

fn call_error(status: tonic::Status) -> ReflectError {
    if status.code() == Code::Unimplemented {
        ReflectError::Unsupported
    } else {
        ReflectError::Call(format!("{:?}: {}", status.code(), status.message()))
    }
}

/// Re-reads a message as its twin of the other reflection version (same fields, same numbers).
fn convert<A: Message, B: Message + Default>(message: &A) -> Result<B, ReflectError> {
    B::decode(message.encode_to_vec().as_slice())
        .map_err(|e| ReflectError::Invalid(format!("reflection message: {e}")))
}
