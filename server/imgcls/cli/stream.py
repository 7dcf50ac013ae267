"""imgcls stream: a folder of images or a video file's frames over one ClassifyStream."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcls.cli.common import (
    IMAGE_SUFFIXES,
    SourceError,
    UsageError,
    add_client_options,
    add_ranking_options,
    brief,
    client_from_args,
    prediction_dicts,
)

if TYPE_CHECKING:
    from imgcls.client import StreamResult
    from imgcls.v1 import classifier_pb2 as pb


def add_parser(sub: Any) -> None:
    stream = sub.add_parser(
        "stream",
        help="classify a folder of images or a video file (needs imgcls[video]) over one stream",
        description="Classify a folder of images (in name order) or the frames of a video file (needs PyAV: "
        "pip install 'imgcls[video]') over one ClassifyStream. One line per frame, named after its file; a "
        "progress bar on a terminal; the exit status is 1 when any frame failed or none was sent.",
    )
    stream.add_argument("source", metavar="SOURCE", help="a folder of images or a video file")
    add_ranking_options(stream, top_k=1)
    stream.add_argument("--json", action="store_true", help="print one JSON object per frame (default: text)")
    stream.add_argument(
        "--drop-stale", action="store_true", help="skip frames that queue up, as for live video (default: off)"
    )
    add_client_options(stream)


@dataclass
class Source:
    """A validated stream source: the frames to send (as requests named after their file or frame)."""

    name: str
    total: int | None  # frames, when known
    frames: Callable[[Callable[[str, str], None]], Iterator[pb.ClassifyStreamRequest]]


def _folder_source(folder: Path) -> Source:
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise UsageError(f"{folder}: cannot list the folder: {exc.strerror or exc}") from None
    if not files:
        raise UsageError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")

    def frames(report: Callable[[str, str], None]) -> Iterator[pb.ClassifyStreamRequest]:
        from imgcls.v1 import classifier_pb2 as pb

        for file in files:
            try:
                data = file.read_bytes()
            except OSError as exc:  # gone or unreadable since it was listed: that file fails, the rest go on
                report(str(file), f"cannot read: {exc.strerror or exc}")
                continue
            yield pb.ClassifyStreamRequest(inputs=[pb.Input(image=data)], request_id=str(file))

    return Source(str(folder), len(files), frames)


def _video_source(video: Path) -> Source:
    try:
        import av  # type: ignore[import-not-found]
    except ImportError:
        raise UsageError(f"{video}: reading video files needs PyAV: pip install 'imgcls[video]'") from None
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise UsageError(f"{video}: has no video stream")
            total = int(container.streams.video[0].frames) or None
    except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
        raise UsageError(f"{video}: cannot read it as a video: {exc}") from None

    def frames(report: Callable[[str, str], None]) -> Iterator[pb.ClassifyStreamRequest]:
        from imgcls.client.inputs import to_input
        from imgcls.v1 import classifier_pb2 as pb

        index = 0
        try:
            with av.open(str(video)) as container:
                for index, frame in enumerate(container.decode(video=0)):
                    pixels = frame.to_ndarray(format="rgb24")
                    yield pb.ClassifyStreamRequest(inputs=[to_input(pixels)], request_id=f"{video}#{index}")
        except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
            # Raised in gRPC's request thread; the client raises it again here, in cmd_stream.
            raise SourceError(f"{video}: cannot decode frame {index}: {exc}") from None

    return Source(str(video), total, frames)


def stream_source(source: str) -> Source:
    """Check a stream source before any stream is opened; UsageError says what is wrong with it."""
    path = Path(source)
    if not path.exists():
        raise UsageError(f"{source}: no such file or folder")
    if path.is_dir():
        return _folder_source(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(
            f"{source}: is one image; stream takes a folder of images or a video file (imgcls classify {source})"
        )
    return _video_source(path)


class _Output:
    """Stream output: results on stdout (text or JSON lines), errors on stderr, a progress bar on a terminal."""

    def __init__(self, args: argparse.Namespace, source: Source) -> None:
        self.json = args.json
        self.lock = threading.Lock()
        self.answered = self.failed = self.skipped = 0
        self.progress: Any = None
        self.task: Any = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.progress.add_task(source.name, total=source.total)

    def __enter__(self) -> _Output:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def error(self, name: str, message: str) -> None:
        """A frame that failed (here or on the server)."""
        with self.lock:
            self.failed += 1
            self._advance()
            if self.json:
                print(json.dumps({"frame": name, "error": message}), flush=True)
            sys.stdout.flush()
            print(f"imgcls stream: {name}: {message}", file=sys.stderr, flush=True)

    def result(self, result: StreamResult) -> None:
        name = result.request_id
        if not result.skipped and not result.ok:
            self.error(name, f"{result.code.name}: {brief(result.message)}")
            return
        with self.lock:
            self.answered += 1
            self._advance()
            if result.skipped:
                self.skipped += 1
                print(json.dumps({"frame": name, "skipped": True}) if self.json else f"{name}  skipped", flush=True)
                return
            predictions = result.predictions[0] if result.predictions else []
            if self.json:
                print(json.dumps({"frame": name, "predictions": prediction_dicts(predictions)}), flush=True)
            elif len(predictions) == 1:
                print(f"{name}  {predictions[0].score:.4f}  {predictions[0].label}", flush=True)
            else:
                print(name)
                for prediction in predictions:
                    print(f"  {prediction.score:8.4f}  {prediction.label}")
                sys.stdout.flush()


def cmd_stream(args: argparse.Namespace) -> int:
    from imgcls.client import ClientError

    source = stream_source(args.source)
    started = time.perf_counter()
    with client_from_args(args) as client, _Output(args, source) as output:
        try:
            results = client.classify_stream(
                source.frames(output.error),
                model=args.model,
                top_k=args.top_k,
                threshold=args.threshold,
                function_to_apply=args.function,
                drop_stale=args.drop_stale,
            )
            for result in results:
                output.result(result)
        except (ClientError, SourceError) as exc:
            print(f"imgcls stream: {exc}", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - started
    count = output.answered + output.failed
    rate = output.answered / elapsed if elapsed else 0.0
    summary = f"{output.answered} frames in {elapsed:.2f}s: {rate:.1f} frames/s"
    if output.failed or output.skipped:
        summary += f"; {output.failed} failed, {output.skipped} skipped"
    print(summary, file=sys.stderr)
    if not count:
        print("imgcls stream: no frame was sent", file=sys.stderr)
        return 1
    return 1 if output.failed or not output.answered else 0
