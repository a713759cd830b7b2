/** The suite's version; every plugin reports it as its handler VERSION. */
export const SUITE_VERSION = "0.1.0";
