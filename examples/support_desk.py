"""An example application embedding the chatbot: a tiny multi-user help desk.

Each user gets a named session in one database; every turn is stored, and a user's history
can be read back. Run it from the repository root:

    python examples/support_desk.py --db /tmp/support.db
"""

from __future__ import annotations

import argparse

from chatbot.cli.quiet import import_tensorflow_quietly

import_tensorflow_quietly()  # before anything imports TensorFlow: no C++ start-up log lines

from chatbot import ChatBot, ChatbotError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite:///support.db", help="SQLAlchemy URL or SQLite file")
    parser.add_argument("--model", help="bundle directory or name (default: models/default)")
    args = parser.parse_args()

    conversations = {
        "alice": ["Hello", "What is AI?", "What is your favorite programming language"],
        "bob": ["Hi", "Who are you?", "Tell me a joke"],
    }
    with ChatBot.load(args.model, db=args.db) as bot:
        for user, messages in conversations.items():
            session = bot.session(user)  # resumes the user's session, or starts it
            for text in messages:
                try:
                    reply = bot.reply(text, session=session.id)
                except ChatbotError as exc:  # typed errors: the user's message is already stored
                    print(f"[{user}] error: {exc}")
                    continue
                flag = " (fallback)" if reply.fallback else ""
                print(f"[{user}] {text!r} -> {reply.text!r}  score {reply.score:.2f}, "
                      f"{reply.latency_ms:.1f} ms{flag}")

        for info in bot.sessions():
            last = bot.history(info.id, last=2)
            print(f"session {info.id} ({info.name}): {info.message_count} messages, "
                  f"last: {last[-1].role}: {last[-1].text!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
