"""Natural English sentences of varied length for the CPU benchmarks (written for shoal; no data
set download). Long ones reach the 128-token truncation, short ones leave most of a row padded."""

SENTENCES: tuple[str, ...] = (
    "How do I reset my password if I no longer have access to my email account?",
    "The city council voted on Tuesday to extend the bike lane network along the river, after a "
    "year of public consultations in which residents raised concerns about parking, delivery "
    "vans and the safety of children walking to the two schools on the east bank.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Best pizza near me open late",
    "In 1969, Apollo 11 landed on the Moon, and Neil Armstrong became the first person to walk "
    "on its surface while Michael Collins orbited above in the command module.",
    "Symptoms of dehydration include thirst, dark urine, fatigue, dizziness and confusion.",
    "The quarterly report shows revenue grew by eight percent, driven mostly by subscriptions, "
    "while hardware sales declined for the third consecutive quarter because of supply issues "
    "and weaker demand in Europe; the board expects margins to recover next year as the new "
    "factory comes online and shipping costs return to the levels seen before the pandemic.",
    "Can dogs eat grapes?",
    "A transformer encoder maps a sequence of tokens to a sequence of contextual vectors.",
    "She opened the old wooden box and found a stack of letters tied with a faded blue ribbon.",
    "What is the difference between a virus and a bacterium, and why do antibiotics only work "
    "against one of them?",
    "Add the flour gradually, stirring constantly so that no lumps form, then let the dough rest "
    "for thirty minutes in a warm place before shaping it into two loaves.",
    "The train to Berlin is delayed by forty minutes due to a signal failure near Hanover.",
    "Quantum computers use qubits, which can represent zero and one at the same time.",
    "Return policy: items can be returned within 30 days with the original receipt.",
    "The museum's new wing houses a collection of Impressionist paintings donated by a local "
    "family, including two works by Monet that have never been shown to the public before, and "
    "a series of sketches that reveal how the artist planned his compositions in the garden.",
    "Install the package with pip and run the tests.",
    "Why is the sky blue during the day and red at sunset?",
    "Migratory birds navigate using the Earth's magnetic field, the position of the sun and "
    "stars, and landmarks such as coastlines and mountain ranges.",
    "Thanks, see you tomorrow!",
    "The committee rejected the proposal because the budget did not account for maintenance.",
    "Regular exercise lowers blood pressure, improves sleep and reduces the risk of heart "
    "disease, type 2 diabetes and several kinds of cancer, according to a large review of "
    "studies published over the last three decades in medical journals around the world.",
    "Where can I find the user manual for this washing machine?",
    "The glacier has retreated more than two kilometres since measurements began in 1900.",
    "Our team is hiring a backend engineer with experience in distributed systems.",
    "Translate 'good morning' into French, Spanish and Italian.",
    "The novel follows three generations of a fishing family on a small island, and the "
    "changes that tourism, new laws and a warming sea bring to their way of life, told through "
    "the letters the grandmother writes to a son who emigrated to Canada decades ago.",
    "Volcanic eruptions can cool the global climate for a year or two.",
    "Is it safe to update the firmware while the device is charging?",
    "The recipe calls for two cups of rice, four cups of water and a pinch of salt.",
    "Researchers trained a small model that matches a much larger one on retrieval benchmarks.",
    "Please confirm your attendance by Friday.",
)
