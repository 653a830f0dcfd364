//! Checkpoints (§6): create and restore stream their progress; list, get, delete are plain.

use sprites_api::checkpoint::{Checkpoint, CreateCheckpointRequest, StreamEvent};

use crate::client::{sprite_path, SpriteHandle};
use crate::error::{Error, Result};
use crate::ndjson::NdjsonStream;

/// The NDJSON progress lines of a create or restore, as they arrive.
pub type Progress = NdjsonStream<StreamEvent>;

impl Progress {
    /// Reads to the end, handing each line to `each`; the `complete` message, or the `error`
    /// line as an error.
    pub async fn finish(mut self, mut each: impl FnMut(&StreamEvent)) -> Result<String> {
        let mut complete = None;
        while let Some(ev) = self.next().await? {
            each(&ev);
            match ev.kind.as_str() {
                "error" => {
                    return Err(Error::Api {
                        status: 500,
                        code: None,
                        message: ev.error.or(ev.data).unwrap_or_else(|| "failed".into()),
                    })
                }
                "complete" => complete = Some(ev.data.unwrap_or_default()),
                _ => {}
            }
        }
        complete.ok_or_else(|| Error::Protocol("progress stream ended without a result".into()))
    }
}

impl SpriteHandle {
    /// Starts a checkpoint of the sprite's disk; read the returned progress to the end.
    pub async fn create_checkpoint(&self, comment: Option<&str>) -> Result<Progress> {
        let req = CreateCheckpointRequest {
            comment: comment.map(str::to_string),
        };
        let resp = self
            .client
            .send_stream(
                self.client
                    .request(
                        reqwest::Method::POST,
                        &sprite_path(&self.name, "/checkpoint"),
                    )
                    .json(&req),
                &[200],
            )
            .await?;
        Ok(Progress::new(resp))
    }

    /// Checkpoints, newest first, after the `Current` pseudo-entry.
    pub async fn list_checkpoints(&self, include_auto: bool) -> Result<Vec<Checkpoint>> {
        let mut r = self.client.request(
            reqwest::Method::GET,
            &sprite_path(&self.name, "/checkpoints"),
        );
        if include_auto {
            r = r.query(&[("includeAuto", "true")]);
        }
        self.client.json(r, &[200]).await
    }

    /// One checkpoint.
    pub async fn get_checkpoint(&self, id: &str) -> Result<Checkpoint> {
        let path = sprite_path(&self.name, &format!("/checkpoints/{}", escape(id)));
        self.client
            .json(self.client.request(reqwest::Method::GET, &path), &[200])
            .await
    }

    /// Restores a checkpoint: the sprite's processes end and it boots on the checkpoint's disk.
    pub async fn restore_checkpoint(&self, id: &str) -> Result<Progress> {
        let path = sprite_path(&self.name, &format!("/checkpoints/{}/restore", escape(id)));
        let resp = self
            .client
            .send_stream(self.client.request(reqwest::Method::POST, &path), &[200])
            .await?;
        Ok(Progress::new(resp))
    }

    /// Deletes a checkpoint.
    pub async fn delete_checkpoint(&self, id: &str) -> Result<()> {
        let path = sprite_path(&self.name, &format!("/checkpoints/{}", escape(id)));
        self.client
            .send(
                self.client.request(reqwest::Method::DELETE, &path),
                &[200, 204],
            )
            .await
            .map(|_| ())
    }
}

fn escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
