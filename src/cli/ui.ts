/**
 * Terminal output shared by the commands: colors only on a terminal and never with
 * NO_COLOR (https://no-color.org) or TERM=dumb, and progress bars (cli-progress) only when
 * stderr is a terminal, so piped output and logs stay plain.
 */
import { styleText } from "node:util";
import cliProgress from "cli-progress";

type Stream = { isTTY?: boolean };

export function colorsOn(stream: Stream = process.stdout): boolean {
  const noColor = process.env.NO_COLOR;
  return stream.isTTY === true && (noColor === undefined || noColor === "") && process.env.TERM !== "dumb";
}

export type Color = "red" | "yellow" | "green" | "dim" | "bold";

/** `text` in `color` when stdout takes colors, else as is. */
export function paint(color: Color, text: string, stream: Stream = process.stdout): string {
  // validateStream off: the decision is colorsOn's. Node's own check reads TERM's color
  // depth and paints nothing on a terminal whose TERM is unset (as under CI's `script`).
  return colorsOn(stream) ? styleText(color, text, { validateStream: false }) : text;
}

export interface Progress {
  update(scanned: number, total: number): void;
  stop(): void;
}

const NO_PROGRESS: Progress = { update() {}, stop() {} };

/** A progress bar on stderr (keys scanned, rate, ETA), or nothing when stderr is not a terminal. */
export function progress(label: string): Progress {
  if (process.stderr.isTTY !== true) return NO_PROGRESS;
  const started = Date.now();
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} {bar} {value}/{total} keys | {rate} keys/s | ETA {eta_formatted}`,
      etaBuffer: 20,
      hideCursor: true,
      clearOnComplete: true,
      noTTYOutput: false,
    },
    cliProgress.Presets.shades_classic,
  );
  let begun = false;
  return {
    update(scanned, total) {
      const rate = Math.round(scanned / Math.max(0.001, (Date.now() - started) / 1000));
      if (!begun) {
        bar.start(Math.max(total, scanned), scanned, { rate });
        begun = true;
      } else {
        bar.setTotal(Math.max(total, scanned));
        bar.update(scanned, { rate });
      }
    },
    stop() {
      if (begun) bar.stop();
    },
  };
}
