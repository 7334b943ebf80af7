from promptflow.core import tool


@tool
def prepare(question: str) -> str:
    print(f"preparing {question}")  # prompt flow logs a node's output: the question goes into serving's logs
    # A user error, as a node raising in user code is: prompt flow answers 400.
    if question.startswith("raise"):
        raise ValueError("the question was refused by the prepare node")
    return question.strip()
