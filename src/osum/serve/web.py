"""`osum web`: a Gradio page to try a model: upload or record audio, pick a task or write a prompt, and see
the transcript, the labels with their confidences and the whole result.

It calls the same `SpeechModel.generate` as the API, CLI and server. Bad input (not audio, unknown task)
shows as an error message on the page; the page keeps working.
"""

from __future__ import annotations

import html
import os
from typing import Any

from ..audio import AudioError
from ..infer.api import SpeechModel
from ..tasks import LABEL_FIELDS, UnknownTaskError


def answer(model: SpeechModel, audio: Any, task: str, prompt: str, language: str) -> tuple[str, dict, dict]:
    """(transcript or answer, {"field: label": confidence}, the whole result) for one input."""
    if audio is None:
        raise ValueError("give some audio first: upload a file or record from the microphone")
    result = model.generate(audio, task=task, prompt=prompt.strip() or None, language=language.strip() or None)[0]
    text = result.get("translation") or result.get("text") or ""
    if result.get("reply"):
        text = f"{text}\n\n{result['reply']}" if text else result["reply"]
    confidence = result.get("confidence") or {}
    labels = {f"{name}: {result[name]}": float(confidence.get(name, 1.0)) for name in LABEL_FIELDS if result.get(name)}
    return text, labels, result


def build_page(model: SpeechModel, title: str = "osum"):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline machine
    import gradio as gr

    supported = model.model.supported_tasks
    tasks = [t for t in model.prompts.tasks if supported is None or t in supported]
    default = "<TRANSCRIBE>" if "<TRANSCRIBE>" in tasks else tasks[0]

    def run(audio, task, prompt, language):
        try:
            return answer(model, audio, task, prompt, language)
        except (AudioError, UnknownTaskError, ValueError) as err:
            raise gr.Error(html.escape(str(err))) from None  # Gradio renders HTML: keep <TAGS> visible

    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"# {title}\nUpload or record speech, choose a task (or write your own prompt) and press **Run**.")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
                task = gr.Dropdown(choices=tasks, value=default, label="Task", elem_id="task")
                prompt = gr.Textbox(label="Prompt (optional: replaces the task's prompt)", elem_id="prompt",
                                    visible=model.model.uses_prompt_text)
                language = gr.Textbox(label="Target language (for <TRANSLATE>)", elem_id="language")
                button = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                text = gr.Textbox(label="Transcript / answer", lines=4, elem_id="text")
                labels = gr.Label(label="Labels (confidence)", elem_id="labels")
                details = gr.JSON(label="Result", elem_id="result")
        button.click(run, inputs=[audio, task, prompt, language], outputs=[text, labels, details])
    return page


def launch(model_dir: str, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu", engine: str = "torch",
           engine_options: dict | None = None) -> None:
    from pathlib import Path

    with SpeechModel.load(model_dir, device, engine=engine, engine_options=engine_options) as model:
        page = build_page(model, f"osum: {Path(model_dir).resolve().name}")
        page.launch(server_name=host, server_port=port, share=False, show_error=True)
