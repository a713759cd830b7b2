/**
 * What every `krs` command registered on the commander program shares: actions return an
 * exit status (0 ok, 1 failure or warnings, 2 usage or errors), and runtime failures
 * become one line on stderr, never a stack trace.
 */
import { Command, InvalidArgumentError, Option } from "commander";
import { UsageError } from "./args.js";
import { REDIS_URL_HELP } from "./redis.js";

export type Run = <A extends unknown[]>(name: string, fn: (...args: A) => Promise<number>) => (...args: A) => Promise<void>;

/** Registers one command on the program; `run` wraps its action. */
export type Register = (program: Command, run: Run) => void;

export function positiveInt(flag: string, max = 1_000_000_000): (value: string) => number {
  return (value) => {
    if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > max) throw new InvalidArgumentError(`${flag}: expected a whole number from 1 to ${max}`);
    return Number(value);
  };
}

export function wholeNumber(flag: string): (value: string) => number {
  return (value) => {
    if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`${flag}: expected a whole number (0 = no limit)`);
    return Number(value);
  };
}

export const redisOption = () => new Option("--redis <url>", REDIS_URL_HELP);
export const jsonOption = () => new Option("--json", "print JSON instead of text");

/** A runtime failure worth one line (`krs <name>: <message>`), exit 1. */
export function failureLine(name: string, e: unknown): string {
  return `krs ${name}: ${e instanceof Error ? e.message : String(e)}`;
}

export { UsageError };
