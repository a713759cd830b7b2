import type { Register } from "./command.js";
export const registerDoctor: Register = () => {};
